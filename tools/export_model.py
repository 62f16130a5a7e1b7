"""export_model: checkpoint -> model folder (model.onnx, model.pt, model.json), checked against PyTorch."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tools._cli import run_cli


def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="export_model", description=__doc__)
    p.add_argument("--checkpoint", nargs="+", metavar="RUN/last.pt",
                   help="OUT/last.pt written by train; several: their networks averaged weight by weight, for fine-tunes "
                        "of one network (e.g. seeds of a --freeze-encoder run)")
    p.add_argument("--from-model", metavar="MODEL",
                   help="a model folder (e.g. the shipped one) instead of --checkpoint: with --coarse-map, add that "
                        "network to a copy of it (OUT); with --memory-data, refit its memories into OUT (thresholds, "
                        "coarse-map network and provenance kept)")
    p.add_argument("--untrained", action="store_true", help="random weights, for speed benchmarks only")
    p.add_argument("--arch", default="tiny_unet", choices=["tiny_unet", "ae_ssim"], help="with --untrained")
    p.add_argument("--width", type=int, default=32, choices=[8, 16, 32], help="with --untrained")
    p.add_argument("--channels", type=int, default=1, choices=[1, 3], help="with --untrained")
    p.add_argument("--out", required=True, help="model folder to write")
    p.add_argument("--opset", type=int, default=17, help="ONNX opset of model.onnx; default %(default)s")
    p.add_argument("--memory-data", metavar="DIR",
                   help="fit the tile memory on these OK images (or an MVTec folder's train/good) before export")
    p.add_argument("--memory-line", metavar="LINE.yaml",
                   help="with --memory-data: the images are camera frames of OK parts; fit on them as this line "
                        "preprocesses them (rectified, tiled)")
    p.add_argument("--memory-canonical", metavar="LINE.yaml",
                   help="with --memory-data: OK part images (such as train/good); fit the memories on each image "
                        "as it is and as this line will rectify it (turned and warped to its canonical part size)")
    p.add_argument("--memory-frames", metavar="DIR",
                   help="with --memory-canonical: camera frames of OK parts on that line (hundreds; empty-belt "
                        "frames are skipped); their tiles, as the line preprocesses them, join the memories")
    p.add_argument("--memory-positions", action="store_true",
                   help="with --memory-canonical and --memory-frames: also fit a memory per tile position of that "
                        "line's grid, so that on that line each tile is compared with the OK tiles of its own "
                        "position")
    p.add_argument("--memory-position-rows", type=int, default=None, metavar="N",
                   help="with --memory-positions: rows per position, the shared bank's rows of that position topped "
                        "up by k-centre (default 480, engines.tile_memory.POSITION_MEMORY_ROWS; only the extra rows "
                        "are stored: 1.2 MB on the demo line)")
    p.add_argument("--coarse-map", metavar="RUN/last.pt",
                   help="export the network of this run (train --image-scale 0.5 --width 8) as the model's coarse-map "
                        "network, OUT/coarse_map/: the backends run it on the coarse pass's tiles, and its map is added "
                        "to the defect map")
    p.add_argument("--coarse-map-weight", type=float, default=None,
                   help="with --coarse-map: its weight in the map (default: the tested 0.25, engines.export.COARSE_NET_MAP_WEIGHT)")
    p.add_argument("--map-blur-sigma", type=float, default=None, metavar="PX",
                   help="sigma in pixels of the Gaussian that smooths the finished defect map (default: the tested 2 "
                        "for a --checkpoint, a --from-model folder's own otherwise; 0: no smoothing)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = get_parser().parse_args(argv)

    def go() -> None:
        from engines.artifact import ModelMeta, model_paths
        from calibration.memories import export_model
        from engines.export import (COARSE_NET_MAP_WEIGHT, add_coarse_map_net, check_map_blur_sigma, copy_model,
                                    export_untrained, set_map_blur)
        from engines.tile_memory import LINE_MEMORY_MIN_FRAMES

        weight = COARSE_NET_MAP_WEIGHT if args.coarse_map_weight is None else args.coarse_map_weight
        if args.map_blur_sigma is not None:
            check_map_blur_sigma(args.map_blur_sigma)  # before anything is written
        if args.untrained:
            out = export_untrained(args.arch, args.width, args.channels, args.out)
        elif args.from_model and args.checkpoint:
            raise ValueError("give --from-model MODEL or --checkpoint RUN/last.pt, not both")
        elif args.from_model and args.memory_data:
            model_paths(args.from_model)  # a model folder, or an error naming what is missing
            out = export_model(args.from_model, args.out, args.opset, memory_data=args.memory_data,
                               memory_line=args.memory_line, memory_canonical=args.memory_canonical,
                               coarse_map=args.coarse_map, coarse_map_weight=weight, memory_frames=args.memory_frames,
                               memory_positions=args.memory_positions, memory_position_rows=args.memory_position_rows)
        elif args.from_model:
            if not args.coarse_map and args.map_blur_sigma is None:
                raise ValueError("--from-model MODEL: nothing to do; give --coarse-map RUN/last.pt to add a coarse-map "
                                 "network, --memory-data OK_IMAGES to refit its memories, or --map-blur-sigma PX to "
                                 "smooth its map")
            out = args.out
            model_paths(args.from_model)  # a model folder, or an error naming what is missing
            if Path(args.from_model).resolve() != Path(out).resolve():
                copy_model(args.from_model, out)
            if args.coarse_map:
                add_coarse_map_net(out, args.coarse_map, weight)
        elif args.checkpoint:
            out = export_model(args.checkpoint, args.out, args.opset, memory_data=args.memory_data,
                               memory_line=args.memory_line, memory_canonical=args.memory_canonical,
                               coarse_map=args.coarse_map, coarse_map_weight=weight, memory_frames=args.memory_frames,
                               memory_positions=args.memory_positions, memory_position_rows=args.memory_position_rows)
        else:
            raise ValueError("give --checkpoint OUT/last.pt, --from-model MODEL with --coarse-map, --memory-data or "
                             "--map-blur-sigma, or --untrained for a speed-only model")
        if args.map_blur_sigma is not None:
            set_map_blur(out, args.map_blur_sigma)
        meta = ModelMeta.load(out)
        print(f"wrote {out}: onnx vs torch max abs diff {meta.extra['onnx_vs_torch_max_abs_diff']:.2e}")
        if args.from_model and args.memory_data:
            print(f"export_model: the thresholds in {out} are those of {args.from_model} before the refit, set for its "
                  "old memories: `evaluate --set-thresholds` on labelled images, then `calibrate_line`, set them again",
                  file=sys.stderr)
        elif args.from_model and args.coarse_map:
            print(f"export_model: the map now adds {meta.coarse_map_weight} x the coarse-map network's map; its pixel "
                  "threshold was set for the map without it: `evaluate --set-thresholds` on labelled images sets it again",
                  file=sys.stderr)
        elif args.from_model:
            print(f"export_model: the map is now smoothed with a Gaussian of sigma {meta.map_blur_sigma:g} px; its pixel "
                  "threshold was set for the map as it was: `evaluate --set-thresholds` on labelled images sets it again",
                  file=sys.stderr)
        frames = meta.extra.get("memory_frames")
        if frames is not None and frames < LINE_MEMORY_MIN_FRAMES:
            print(f"export_model: warning: {args.memory_data}: the tile memories were fitted on {frames} line frames; "
                  f"with fewer than about {LINE_MEMORY_MIN_FRAMES} they ranked parts worse on the simulated line "
                  "than memories fitted on the training images. Record "
                  "more OK frames, or export without --memory-line", file=sys.stderr)

    return run_cli(go, "export_model")


if __name__ == "__main__":
    sys.exit(main())
