"""evaluate: metrics.json, ROC/PR plots and worst-case overlays on an MVTec-AD style test split."""
from __future__ import annotations

import argparse
import sys

from tools._cli import run_cli


def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="evaluate", description=__doc__)
    p.add_argument("--model", required=True, help="model folder (model.onnx + model.json)")
    p.add_argument("--data", required=True, help="folder with test/good, test/<type>, ground_truth/<type>")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--backend", default="onnxruntime", choices=["onnxruntime", "onnxruntime-cuda", "torch", "tensorrt"],
                   help="inference backend; onnxruntime-cuda needs onnxruntime-gpu, tensorrt a built engine")
    p.add_argument("--overlap", type=float, default=0.25, help="tile overlap fraction in [0, 1)")
    p.add_argument("--flip-tta", nargs="?", const="h", default="none", choices=["none", "h", "all"],
                   help="average the defect map with flipped passes: h (the default when given without a value) "
                        "or all (horizontal, vertical, both); tile scores stay the plain pass's")
    p.add_argument("--set-thresholds", action="store_true",
                   help="choose pixel (best F1) and image (Youden) thresholds on this split and save them in model.json")
    p.add_argument("--limit", type=int, default=0, help="evaluate an evenly spaced subset of N images")
    p.add_argument("--split", default="all", choices=["all", "val", "test"],
                   help="which test images: all, or one side of the fixed split (a hash of type and file name): "
                        "val for every choice (--set-thresholds always reads val), test to report once; "
                        "default %(default)s")
    return p


def main(argv: list[str] | None = None) -> int:
    args = get_parser().parse_args(argv)

    def go() -> None:
        from engines.evaluate import evaluate, format_table

        r = evaluate(args.model, args.data, args.out, args.backend, args.overlap, args.flip_tta,
                     set_thresholds=args.set_thresholds, limit=args.limit, split=args.split)
        print(format_table(r))
        print(f"ms per tile: {r['ms_per_tile']:.2f} ({r['backend_device']}); wrote {args.out}/metrics.json")

    return run_cli(go, "evaluate")


if __name__ == "__main__":
    sys.exit(main())
