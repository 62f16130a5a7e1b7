"""Sinks process: receives records in frame order and hands each to every enabled sink.

Order per record: the blocking sinks (PLC, overlay images) get it on their own queues, which only
takes a moment; the MES sink spools it to disk; then the results log writes it. So the results log
is never behind the network, and a crash between the sinks can repeat an MES message, never drop
one, and never write a results line twice. A sink that could not deliver a record says so
(``report``), and the results log gets an ``undelivered`` event line for it.

It notes the last frame every sink has handled in ``RUN_DIR/sinks.progress``. Restarted with
``--resume`` (the supervisor does so after a crash), it appends to the results file, asks the stitch
stage to send again what it had not handled, and goes on in frame order, so that each frame still
has exactly one record. It also asks again when records stop coming with a gap before them (a
stitch stage restarted after a crash sends again, from its record journal, what its predecessor
released). A gap that no one fills within ``GAP_TIMEOUT_S`` gets ERROR records: every frame has one.
"""
from __future__ import annotations

import queue
import sys
import time
from pathlib import Path

import numpy as np
import zmq

from pipeline import messages
from pipeline.log import get
from pipeline.sinks.base import build_sinks
from pipeline.sinks.results_log import ResultsLog, last_frame_id, utc_iso
from pipeline.stages._common import POLL_MS, Stage, note_progress, read_progress, run_stage, stage_parser
from pipeline.transport import StatusReporter, make_socket, recv, send_nowait, send_within
from pipeline.wire import WireError

PROGRESS = "sinks.progress"
# Records stopped coming with a gap before them (or before the stream's end) this long: ask the
# stitch stage to send them again, and again every ASK_EVERY_S.
ASK_AFTER_S = 1.0
ASK_EVERY_S = 2.0
# With records waiting behind a gap that no resend filled for this long, the frames of the gap get
# ERROR records and the stage goes on.
GAP_TIMEOUT_S = 10.0


def resume_point(run_dir: Path, results_path: str | None) -> int:
    """The first frame id a restarted stage has not handled: after the noted progress, or after the
    results file's last line when that was written before the progress was noted."""
    done = read_progress(run_dir / PROGRESS)
    if results_path:
        done = max(done, last_frame_id(results_path))
    return done + 1


def lost_record(frame_id: int) -> dict:
    return {"frame_id": frame_id, "source_name": None, "capture_ns": None, "verdict": "ERROR",
            "reason": "record lost between the stitch and sinks stages (both restarted after crashes)",
            "score": None, "defects": []}


def run(stage: Stage, results_path: str | None, resume: bool = False, run_id: str | None = None) -> int:
    progress = stage.run_dir / PROGRESS
    next_id = resume_point(stage.run_dir, results_path) if resume else 0
    undelivered: queue.SimpleQueue = queue.SimpleQueue()  # (frame_id, sink, reason) from the sinks' threads
    sinks = build_sinks(stage.cfg, lambda fid, sink, why: undelivered.put((fid, sink, why)))
    log = ResultsLog(results_path) if results_path else None
    inbox = make_socket(stage.ctx, zmq.PULL, stage.ep("results"), bind=True, hwm=10000)
    ask = make_socket(stage.ctx, zmq.PUSH, stage.ep("verdict"), bind=False, hwm=10)
    status = StatusReporter(stage.ctx, stage.ep("status"), "sinks")
    if resume:
        send_within(ask, messages.resend(next_id), 5000)
        get("sinks").info(f"resumed; asked for the records from frame {next_id} again")
    waiting: dict[int, tuple[dict, dict, np.ndarray | None]] = {}  # records after a gap, until it fills
    expected: int | None = None
    last_progress = last_ask = time.monotonic()

    def deliver(record: dict, arrays: dict, H: np.ndarray | None) -> None:
        if run_id:  # with frame_id, names the record across runs (the MES's idempotency key)
            record["run_id"] = run_id
        if record.get("capture_ns") is not None:  # monotonic capture time -> wall clock, for the log and the MES
            record["captured_at"] = utc_iso(time.time_ns() - (time.monotonic_ns() - record["capture_ns"]))
        t0 = time.monotonic_ns()
        for s in sinks:
            s.handle(record, arrays, H)
        if log is not None:
            log.handle(record, arrays, H)
        status.add(busy_ms=(time.monotonic_ns() - t0) / 1e6, **{f"v_{record['verdict']}": 1},
                   latency_ms_sum=record.get("latency_ms") or 0.0)

    try:
        while not stage.stopping:
            try:
                msg = recv(inbox, POLL_MS)
            except WireError as exc:  # counted and logged; the line goes on
                get("sinks").warning(f"dropped malformed message: {exc}")
                status.add(processed=0, bad_messages=1)
                msg = None
            for s in sinks:  # a QueuedSink's tick is the base no-op: its thread ticks the sink it runs
                s.tick()
            if log is not None:
                log.tick()
            while True:
                try:
                    fid, sink, why = undelivered.get_nowait()
                except queue.Empty:
                    break
                status.add(processed=0, undelivered=1)
                if log is not None:
                    log.event("undelivered", fid, sink=sink, reason=why)
            if msg is not None:
                header, arrays = msg
                kind = header["kind"]
                if kind == "end":
                    expected = header["count"]
                elif kind == "record":
                    if header["record"]["frame_id"] >= next_id:  # below it: handled before, sent again
                        record = header["record"]
                        H = np.asarray(header["H"]).reshape(3, 3) if "H" in header else None
                        waiting[record["frame_id"]] = (record, arrays, H)
                else:
                    get("sinks").warning(f"dropped a {kind} message (this stage takes records)")
                    status.add(processed=0, bad_messages=1)
            stalled = next_id not in waiting and (waiting or (expected is not None and next_id < expected))
            now = time.monotonic()
            if stalled and now - last_progress > ASK_AFTER_S and now - last_ask > ASK_EVERY_S:
                send_nowait(ask, messages.resend(next_id))
                last_ask = now
            if stalled and now - last_progress > GAP_TIMEOUT_S:
                until = min(waiting) if waiting else expected
                get("sinks").warning(f"no record came for frames {next_id}..{until - 1}, also when asked again; they get "
                      "ERROR records")
                for fid in range(next_id, until):
                    waiting[fid] = (lost_record(fid), {}, None)
            while next_id in waiting:
                deliver(*waiting.pop(next_id))
                note_progress(progress, next_id)
                next_id += 1
                last_progress = time.monotonic()
            if expected is not None and next_id >= expected:
                status.add(processed=0, finished=1)
                break
            if msg is None:
                status.flush()
    finally:
        for s in sinks:
            s.close()
        while True:  # what the blocking sinks reported while they drained
            try:
                fid, sink, why = undelivered.get_nowait()
            except queue.Empty:
                break
            if log is not None:
                log.event("undelivered", fid, sink=sink, reason=why)
        if log is not None:
            log.close()
        status.close()
        inbox.close()
        ask.close()
    return 0


def main(argv: list[str] | None = None) -> int:
    p = stage_parser("sinks")
    p.add_argument("--results", help="results.jsonl path")
    p.add_argument("--resume", action="store_true", help="restarted after a crash: go on after the last record handled")
    p.add_argument("--run-id", help="names this run in every record (run_pipeline: UTC start time and host)")
    return run_stage(p, argv, lambda stage, a: run(stage, a.results, a.resume, a.run_id))


if __name__ == "__main__":
    sys.exit(main())
