"""Sinks process: receives records in frame order and hands each to every enabled sink."""
from __future__ import annotations

import sys
import time

import numpy as np
import zmq

from pipeline.sinks.base import build_sinks
from pipeline.sinks.results_log import utc_iso
from pipeline.stages._common import POLL_MS, Stage, run_stage, stage_parser
from pipeline.transport import StatusReporter, make_socket, recv
from pipeline.wire import WireError


def run(stage: Stage, results_path: str | None) -> int:
    sinks = build_sinks(stage.cfg, results_path)
    inbox = make_socket(stage.ctx, zmq.PULL, stage.ep("results"), bind=True, hwm=10000)
    status = StatusReporter(stage.ctx, stage.ep("status"), "sinks")
    try:
        while not stage.stopping:
            try:
                msg = recv(inbox, POLL_MS)
            except WireError as exc:
                print(f"sinks: dropped malformed message: {exc}", file=sys.stderr)
                msg = None
            for s in sinks:
                s.tick()
            if msg is None:
                status.flush()
                continue
            header, arrays = msg
            if header.get("kind") == "end":
                status.add(processed=0, finished=1)
                break
            record = header["record"]
            if record.get("capture_ns") is not None:  # monotonic capture time -> wall clock, for the log and the MES
                record["captured_at"] = utc_iso(time.time_ns() - (time.monotonic_ns() - record["capture_ns"]))
            H = np.asarray(header["H"]).reshape(3, 3) if "H" in header else None
            t0 = time.monotonic_ns()
            for s in sinks:
                s.handle(record, arrays, H)
            status.add(busy_ms=(time.monotonic_ns() - t0) / 1e6, **{f"v_{record['verdict']}": 1},
                       latency_ms_sum=record.get("latency_ms") or 0.0)
    finally:
        for s in sinks:
            s.close()
        status.close()
        inbox.close()
    return 0


def main(argv: list[str] | None = None) -> int:
    p = stage_parser("sinks")
    p.add_argument("--results", help="results.jsonl path")
    return run_stage(p, argv, lambda stage, a: run(stage, a.results))


if __name__ == "__main__":
    sys.exit(main())
