"""build_engine: ONNX model folder -> TensorRT plan (fp32/fp16/int8, dynamic batch 1..N) + sidecar."""
from __future__ import annotations

import argparse
import sys

from tools._cli import run_cli


def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="build_engine", description=__doc__)
    p.add_argument("--model", required=True, help="model folder (model.onnx + model.json)")
    p.add_argument("--precision", default="fp16", choices=["fp32", "fp16", "int8"],
                   help="fp16 (default) from an fp16 copy of the graph; int8 from a `quantize --target tensorrt` folder, "
                        "or (TensorRT 10) implicit calibration with --calib")
    p.add_argument("--max-batch", type=int, default=256,
                   help="the largest batch of tiles the engine takes; default %(default)s")
    p.add_argument("--opt-batch", type=int, default=None, help="batch size TensorRT tunes for (default: max)")
    p.add_argument("--calib", help="folder of OK images for INT8 calibration (cache kept under calibration/cache)")
    p.add_argument("--timing-cache", help="timing cache file to reuse (default: beside the engine)")
    p.add_argument("--out", required=True, help="engine file, e.g. MODEL/model.engine")
    return p


def main(argv: list[str] | None = None) -> int:
    args = get_parser().parse_args(argv)

    def go() -> int:
        from engines.backends.base import BackendUnavailable
        from engines.tensorrt_build import build_engine

        tiles = None
        if args.precision == "int8" and args.calib:
            from calibration.int8 import calibration_tiles
            from engines.artifact import model_paths

            tiles = calibration_tiles(args.calib, model_paths(args.model)[1])
        try:
            out = build_engine(args.model, args.out, args.precision, args.max_batch, args.opt_batch, tiles,
                               args.timing_cache)
        except BackendUnavailable as exc:
            print(f"build_engine: cannot build here: {exc}", file=sys.stderr)
            return 3
        print(f"wrote {out} and {out}.json")
        return 0

    return run_cli(go, "build_engine")


if __name__ == "__main__":
    sys.exit(main())
