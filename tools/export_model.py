"""export_model: checkpoint -> model folder (model.onnx, model.pt, model.json), checked against PyTorch."""
from __future__ import annotations

import argparse
import sys

from tools._cli import run_cli


def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="export_model", description=__doc__)
    p.add_argument("--checkpoint", help="OUT/last.pt written by train")
    p.add_argument("--untrained", action="store_true", help="random weights, for speed benchmarks only")
    p.add_argument("--arch", default="tiny_unet", choices=["tiny_unet", "ae_ssim"], help="with --untrained")
    p.add_argument("--width", type=int, default=32, choices=[8, 16, 32], help="with --untrained")
    p.add_argument("--channels", type=int, default=1, choices=[1, 3], help="with --untrained")
    p.add_argument("--out", required=True, help="model folder to write")
    p.add_argument("--opset", type=int, default=17)
    p.add_argument("--memory-data", metavar="DIR",
                   help="fit the tile memory on these OK images (or an MVTec folder's train/good) before export")
    p.add_argument("--memory-line", metavar="LINE.yaml",
                   help="with --memory-data: the images are camera frames of OK parts; fit on them as this line "
                        "preprocesses them (rectified, tiled)")
    p.add_argument("--memory-canonical", metavar="LINE.yaml",
                   help="with --memory-data: OK part images (such as train/good); fit the memories on each image "
                        "as it is and as this line will rectify it (turned and warped to its canonical part size)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = get_parser().parse_args(argv)

    def go() -> None:
        from engines.artifact import ModelMeta
        from engines.export import export_model, export_untrained
        from engines.tile_memory import LINE_MEMORY_MIN_FRAMES

        if args.untrained:
            out = export_untrained(args.arch, args.width, args.channels, args.out)
        elif args.checkpoint:
            out = export_model(args.checkpoint, args.out, args.opset, memory_data=args.memory_data,
                               memory_line=args.memory_line, memory_canonical=args.memory_canonical)
        else:
            raise ValueError("give --checkpoint OUT/last.pt, or --untrained for a speed-only model")
        meta = ModelMeta.load(out)
        print(f"wrote {out}: onnx vs torch max abs diff {meta.extra['onnx_vs_torch_max_abs_diff']:.2e}")
        frames = meta.extra.get("memory_frames")
        if frames is not None and frames < LINE_MEMORY_MIN_FRAMES:
            print(f"export_model: warning: {args.memory_data}: the tile memories were fitted on {frames} line frames; "
                  f"with fewer than about {LINE_MEMORY_MIN_FRAMES} they ranked parts worse on the simulated line "
                  "than memories fitted on the training images (README, 'Train on your own OK images'). Record "
                  "more OK frames, or export without --memory-line", file=sys.stderr)

    return run_cli(go, "export_model")


if __name__ == "__main__":
    sys.exit(main())
