"""quantize: ONNX Runtime INT8 static quantisation (QDQ) of a model folder, calibrated on OK images."""
from __future__ import annotations

import argparse
import sys

from tools._cli import run_cli


def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="quantize", description=__doc__)
    p.add_argument("--model", required=True, help="fp32 model folder")
    p.add_argument("--calib", required=True, help="folder of OK images (or MVTec-style folder: uses train/good)")
    p.add_argument("--out", required=True, help="int8 model folder to write")
    p.add_argument("--max-tiles", type=int, default=256, help="tiles to calibrate on, drawn evenly from the "
                   "images (full and half scale, as the model sees them); default 256")
    p.add_argument("--method", default="minmax", choices=["minmax", "entropy", "percentile"],
                   help="how activation ranges are set from the calibration tiles; default minmax")
    p.add_argument("--line", help="a line config: --calib then holds recorded OK frames of that line, calibrated "
                                  "on as the line rectifies and tiles them")
    p.add_argument("--target", default="onnxruntime", choices=["onnxruntime", "tensorrt"],
                   help="onnxruntime: u8 activations for CPU kernels; tensorrt: symmetric s8 Q/DQ for "
                        "build_engine --precision int8 (explicit quantisation)")
    p.add_argument("--int8-input-block", action="store_true",
                   help="quantise the first block too: faster, but the map moves further from fp32 "
                        "(docs/benchmarks.md, INT8 against fp32); default keeps it in float")
    return p


def main(argv: list[str] | None = None) -> int:
    args = get_parser().parse_args(argv)

    def go() -> None:
        from calibration.int8 import quantize_model

        out = quantize_model(args.model, args.calib, args.out, args.max_tiles, method=args.method, target=args.target,
                             line=args.line, input_block_float=not args.int8_input_block)
        print(f"wrote {out}")

    return run_cli(go, "quantize")


if __name__ == "__main__":
    sys.exit(main())
