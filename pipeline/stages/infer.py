"""Inference worker: batches tiles across frames (max batch, max wait), runs the configured backend,
returns per-frame tile maps and scores. Start several for more throughput: PUSH/PULL shares the load."""
from __future__ import annotations

import sys
import time

import numpy as np
import zmq

from engines.backends import load_backend
from engines.backends.base import map_coarse_tiles
from pipeline import messages
from pipeline.log import get
from pipeline.stages._common import POLL_MS, HoldingNote, Stage, run_stage, stage_parser
from pipeline.transport import StatusReporter, make_socket, recv, send
from pipeline.vision.tiling import TileGrid
from pipeline.wire import WireError


def warm_up(engine, batch: int) -> None:
    """One pass of a full batch of blank tiles (and of the coarse-map network, when there is one), so
    that the first parts do not pay for the backend's first-run allocations."""
    t = engine.meta.tile_size
    x = np.zeros((max(1, batch), engine.meta.in_channels, t, t), np.float32)
    engine.infer(x)
    if engine.coarse_map is not None:
        engine.coarse_map.infer(x)


def run(stage: Stage, worker: int = 0) -> int:
    cfg = stage.cfg
    options = {"threads": cfg.inference.threads} if cfg.inference.backend in ("onnxruntime", "torch") else {}
    engine = load_backend(cfg.inference.backend, cfg.inference.model, **options)
    meta = engine.meta
    try:  # before the first status message, which tells the line that this worker is ready
        warm_up(engine, cfg.inference.max_batch)
    except Exception as exc:  # the parts will say what is wrong, frame by frame
        get(f"infer{worker}").warning(f"warm-up failed ({exc!r}); serving anyway")
    tiles_in = make_socket(stage.ctx, zmq.PULL, stage.ep("tiles"), bind=False, hwm=4)
    verdict = make_socket(stage.ctx, zmq.PUSH, stage.ep("verdict"), bind=False, hwm=10000)
    status = StatusReporter(stage.ctx, stage.ep("status"), f"infer{worker}")
    max_batch, max_wait_ns = cfg.inference.max_batch, int(cfg.inference.max_wait_ms * 1e6)
    holding = HoldingNote(stage.run_dir, f"infer{worker}")
    try:
        while not stage.stopping:
            batch: list[tuple[dict, dict]] = []
            n_tiles = 0
            deadline = None
            while n_tiles < max_batch and not stage.stopping:
                timeout = POLL_MS if deadline is None else max(0, (deadline - time.monotonic_ns()) // 1_000_000)
                try:
                    msg = recv(tiles_in, int(timeout))
                except WireError as exc:  # counted and logged; the line goes on
                    get(f"infer{worker}").warning(f"dropped malformed message: {exc}")
                    status.add(processed=0, bad_messages=1)
                    continue
                if msg is None:
                    break
                if msg[0]["kind"] != "tiles":
                    get(f"infer{worker}").warning(f"dropped a {msg[0]['kind']} message (this stage takes tiles)")
                    status.add(processed=0, bad_messages=1)
                    continue
                batch.append(msg)
                n_tiles += len(msg[1]["tiles"])
                deadline = deadline or time.monotonic_ns() + max_wait_ns
            if not batch:
                status.flush()
                continue
            holding.write([h["frame_id"] for h, _ in batch])  # once per batch, before the work that may crash
            t0 = time.monotonic_ns()
            stacked = np.concatenate([arrays["tiles"] for _, arrays in batch])
            try:
                maps, scores = engine.infer(meta.normalise(stacked))
                if engine.coarse_map is not None:  # the coarse pass's tiles (past the frame's fine grid) get its maps
                    coarse = np.concatenate([arrays["tile_index"] >= len(TileGrid.from_dict(header["grid"]))
                                             for header, arrays in batch])
                    maps = map_coarse_tiles(engine, stacked, maps, coarse)
                error = ""
            except Exception as exc:  # report per frame, keep serving
                maps = scores = None
                error = f"inference failed: {exc!r}"
            t1 = time.monotonic_ns()
            start = 0
            for header, arrays in batch:
                n = len(arrays["tiles"])
                if maps is None:
                    send(verdict, messages.result(header, "ERROR", error))
                    continue
                out = {"maps": maps[start:start + n].astype(np.float16), "scores": scores[start:start + n],
                       "tile_index": arrays["tile_index"], "part_mask": arrays["part_mask"]}
                if "frame" in arrays:
                    out["frame"] = arrays["frame"]
                send(verdict, messages.maps(header, [t0, t1], len(stacked)), out)
                start += n
            status.add(processed=len(batch), busy_ms=(t1 - t0) / 1e6, tiles=len(stacked))
    finally:
        status.close()
        tiles_in.close()
        verdict.close()
        engine.close()
    return 0


def main(argv: list[str] | None = None) -> int:
    p = stage_parser("infer")
    p.add_argument("--worker", type=int, default=0, help="this worker's number among the inference workers; default %(default)s")
    return run_stage(p, argv, lambda stage, a: run(stage, a.worker))


if __name__ == "__main__":
    sys.exit(main())
