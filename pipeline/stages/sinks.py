"""Sinks process: receives records in frame order and hands each to every enabled sink.

It notes the last frame every sink has handled in ``RUN_DIR/sinks.progress``. Restarted with
``--resume`` (the supervisor does so after a crash), it appends to the results file, asks the stitch
stage to send again what it had not handled, and goes on in frame order, so that each frame still
has exactly one record. The results log is the last sink to see a record: a crash between the sinks
can repeat a PLC or MES message, never drop one, and never write a results line twice.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import zmq

from pipeline.sinks.base import build_sinks
from pipeline.sinks.results_log import last_frame_id, utc_iso
from pipeline.stages._common import POLL_MS, Stage, note_progress, read_progress, run_stage, stage_parser
from pipeline.transport import StatusReporter, make_socket, recv, send
from pipeline.wire import WireError

PROGRESS = "sinks.progress"
# With records waiting behind a gap that a resend did not fill for this long (the frames fell out of
# the stitch stage's RESEND_WINDOW), the stage says which frames lost their record and goes on.
GAP_TIMEOUT_S = 10.0


def resume_point(run_dir: Path, results_path: str | None) -> int:
    """The first frame id a restarted stage has not handled: after the noted progress, or after the
    results file's last line when that was written before the progress was noted."""
    done = read_progress(run_dir / PROGRESS)
    if results_path:
        done = max(done, last_frame_id(results_path))
    return done + 1


def run(stage: Stage, results_path: str | None, resume: bool = False, run_id: str | None = None) -> int:
    progress = stage.run_dir / PROGRESS
    next_id = resume_point(stage.run_dir, results_path) if resume else 0
    sinks = build_sinks(stage.cfg, results_path)
    inbox = make_socket(stage.ctx, zmq.PULL, stage.ep("results"), bind=True, hwm=10000)
    status = StatusReporter(stage.ctx, stage.ep("status"), "sinks")
    if resume:
        ask = make_socket(stage.ctx, zmq.PUSH, stage.ep("verdict"), bind=False, hwm=10)
        send(ask, {"kind": "resend", "from": next_id})
        ask.close()
        print(f"sinks: resumed; asked for the records from frame {next_id} again", file=sys.stderr, flush=True)
    waiting: dict[int, tuple[dict, dict, np.ndarray | None]] = {}  # records after a gap, until it fills
    expected: int | None = None
    last_progress = time.monotonic()
    try:
        while not stage.stopping:
            try:
                msg = recv(inbox, POLL_MS)
            except WireError as exc:
                print(f"sinks: dropped malformed message: {exc}", file=sys.stderr)
                msg = None
            for s in sinks:
                s.tick()
            if msg is not None:
                header, arrays = msg
                if header.get("kind") == "end":
                    expected = header["count"]
                elif header["record"]["frame_id"] >= next_id:  # below it: handled before, sent again
                    record = header["record"]
                    H = np.asarray(header["H"]).reshape(3, 3) if "H" in header else None
                    waiting[record["frame_id"]] = (record, arrays, H)
            if waiting and next_id not in waiting and time.monotonic() - last_progress > GAP_TIMEOUT_S:
                resumed_at = min(waiting)
                print(f"sinks: no record came for frames {next_id}..{resumed_at - 1} (lost with a crashed sinks stage, "
                      f"beyond the stitch stage's resend window); going on from frame {resumed_at}", file=sys.stderr)
                next_id = resumed_at
            while next_id in waiting:
                record, arrays, H = waiting.pop(next_id)
                if run_id:  # with frame_id, names the record across runs (the MES's idempotency key)
                    record["run_id"] = run_id
                if record.get("capture_ns") is not None:  # monotonic capture time -> wall clock, for the log and the MES
                    record["captured_at"] = utc_iso(time.time_ns() - (time.monotonic_ns() - record["capture_ns"]))
                t0 = time.monotonic_ns()
                for s in sinks:
                    s.handle(record, arrays, H)
                note_progress(progress, next_id)
                next_id += 1
                last_progress = time.monotonic()
                status.add(busy_ms=(time.monotonic_ns() - t0) / 1e6, **{f"v_{record['verdict']}": 1},
                           latency_ms_sum=record.get("latency_ms") or 0.0)
            if expected is not None and next_id >= expected:
                status.add(processed=0, finished=1)
                break
            if msg is None:
                status.flush()
    finally:
        for s in sinks:
            s.close()
        status.close()
        inbox.close()
    return 0


def main(argv: list[str] | None = None) -> int:
    p = stage_parser("sinks")
    p.add_argument("--results", help="results.jsonl path")
    p.add_argument("--resume", action="store_true", help="restarted after a crash: go on after the last record handled")
    p.add_argument("--run-id", help="names this run in every record (run_pipeline: UTC start time and host)")
    return run_stage(p, argv, lambda stage, a: run(stage, a.results, a.resume, a.run_id))


if __name__ == "__main__":
    sys.exit(main())
