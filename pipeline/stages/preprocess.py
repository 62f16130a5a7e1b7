"""Preprocess stage: locate, rectify, mask, tile. Parts go to inference; NO_PART and ERROR go
straight to the stitch stage as results."""
from __future__ import annotations

import sys
import time

import zmq

from engines.artifact import ModelMeta
from pipeline import messages
from pipeline.log import get
from pipeline.processing import Preprocessor
from pipeline.stages._common import POLL_MS, HoldingNote, Stage, run_stage, stage_parser
from pipeline.transport import StatusReporter, make_socket, recv, send
from pipeline.wire import WireError


def run(stage: Stage) -> int:
    cfg = stage.cfg
    meta = ModelMeta.load(cfg.inference.model)
    prep = Preprocessor.for_model(cfg.preprocess, meta)
    frames = make_socket(stage.ctx, zmq.PULL, stage.ep("frames"), bind=True, hwm=2)  # backlog stays at the source
    # Small buffers on the work path: a backlog waits at the source (which blocks, or drops when
    # live), so a frame's latency is its own processing, not a queue of hundreds of frames.
    tiles = make_socket(stage.ctx, zmq.PUSH, stage.ep("tiles"), bind=True, hwm=2)
    verdict = make_socket(stage.ctx, zmq.PUSH, stage.ep("verdict"), bind=False, hwm=10000)
    status = StatusReporter(stage.ctx, stage.ep("status"), "preprocess")
    keep_frame = bool(cfg.sinks.overlays_dir)
    holding = HoldingNote(stage.run_dir, "preprocess")
    camera_said = False  # a camera of the other kind than calibrated: said once, recorded per frame
    try:
        while not stage.stopping:
            try:
                msg = recv(frames, POLL_MS)
            except WireError as exc:  # counted and logged; the line goes on
                get("preprocess").warning(f"dropped malformed message: {exc}")
                status.add(processed=0, bad_messages=1)
                continue
            if msg is None:
                status.flush()
                continue
            header, arrays = msg
            if header["kind"] != "frame":
                get("preprocess").warning(f"dropped a {header['kind']} message (this stage takes frames)")
                status.add(processed=0, bad_messages=1)
                continue
            t0 = time.monotonic_ns()
            base = messages.frame_ids(header)
            holding.write([header["frame_id"]])
            try:
                prepared = prep(arrays["image"])
            except Exception as exc:  # one bad frame must not stop the line
                prepared = None
                send(verdict, messages.result(base, "ERROR", f"preprocess failed: {exc!r}"))
            if prepared is not None and prepared.verdict is not None:
                if prepared.verdict == "ERROR" and "(preprocess.camera)" in prepared.reason and not camera_said:
                    get("preprocess").warning(f"{prepared.reason}; every such frame gets an ERROR record")
                    camera_said = True
                send(verdict, messages.result(base, prepared.verdict, prepared.reason))
            elif prepared is not None:
                out = {"tiles": prepared.tiles, "tile_index": prepared.tile_index, "part_mask": prepared.part_mask}
                if keep_frame:
                    out["frame"] = arrays["image"]
                grids = {"grid": prepared.grid.to_dict()}
                if prepared.coarse_grid is not None:
                    grids["coarse_grid"] = prepared.coarse_grid.to_dict()
                send(tiles, messages.tiles(base, grids, prepared.H, [t0, time.monotonic_ns()]), out)
            status.add(busy_ms=(time.monotonic_ns() - t0) / 1e6)
    finally:
        status.close()
        for s in (frames, tiles, verdict):
            s.close()
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_stage(stage_parser("preprocess"), argv, lambda stage, a: run(stage))


if __name__ == "__main__":
    sys.exit(main())
