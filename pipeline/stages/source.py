"""Source stage: reads frames, registers each with the stitch stage, sends it to preprocessing.

File, dir and replay sources block on back pressure and never drop. Live sources keep a small
queue and drop the oldest frame when it is full; each drop becomes a ``DROPPED`` record.
"""
from __future__ import annotations

import collections
import sys
import time

import zmq

from pipeline.sources import open_source
from pipeline.stages._common import Stage, run_stage, stage_parser
from pipeline.transport import StatusReporter, make_socket, send


def run(stage: Stage, uri: str) -> int:
    cfg = stage.cfg
    source = open_source(uri, cfg.source)
    # The backlog stays here, not in ZeroMQ buffers where frames would silently age: a live source
    # drops its oldest queued frame, a file source simply reads the next frame later.
    frames = make_socket(stage.ctx, zmq.PUSH, stage.ep("frames"), bind=False, hwm=1 if source.live else 2)
    verdict = make_socket(stage.ctx, zmq.PUSH, stage.ep("verdict"), bind=False, hwm=10000)
    status = StatusReporter(stage.ctx, stage.ep("status"), "source")
    queue: collections.deque = collections.deque()
    count = 0

    def register(fid: int, name: str, capture_ns: int) -> None:
        send(verdict, {"kind": "register", "frame_id": fid, "source_name": name, "capture_ns": capture_ns})

    def result(fid: int, name: str, capture_ns: int, verdict_name: str, reason: str) -> None:
        send(verdict, {"kind": "result", "frame_id": fid, "source_name": name, "capture_ns": capture_ns,
                       "verdict": verdict_name, "reason": reason})

    def drain(block: bool) -> None:
        while queue:
            header, image = queue[0]
            try:
                send(frames, header, {"image": image}, flags=0 if block else zmq.NOBLOCK)
            except zmq.Again:
                return
            queue.popleft()

    try:
        for item in source:
            if stage.stopping:
                break
            capture_ns = time.monotonic_ns()
            fid = count
            count += 1
            register(fid, item.name, capture_ns)
            status.add(frames_in=1)
            if item.frame is None:
                result(fid, item.name, capture_ns, "ERROR", item.reason)
                continue
            header = {"kind": "frame", "frame_id": fid, "source_name": item.name, "capture_ns": capture_ns,
                      "recorded_ns": item.recorded_ns}
            queue.append((header, item.frame))
            if source.live:
                while len(queue) > cfg.source.camera.queue:
                    old, _ = queue.popleft()
                    result(old["frame_id"], old["source_name"], old["capture_ns"], "DROPPED",
                           f"inspection behind the camera; oldest of {cfg.source.camera.queue + 1} queued frames dropped")
                    status.add(processed=0, dropped=1)
                drain(block=False)
            else:
                drain(block=True)
        drain(block=True)
        send(verdict, {"kind": "end", "count": count})
    finally:
        source.close()
        status.close()
        frames.close()
        verdict.close()
    return 0


def main(argv: list[str] | None = None) -> int:
    p = stage_parser("source")
    p.add_argument("--source", required=True)
    return run_stage(p, argv, lambda stage, a: run(stage, a.source))


if __name__ == "__main__":
    sys.exit(main())
