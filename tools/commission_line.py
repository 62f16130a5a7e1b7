"""commission_line: from a folder of recorded OK frames of a new line to a ready line config, a
line-fitted model folder and a threshold at the false-alarm rate asked for, with a report."""
from __future__ import annotations

import argparse
import sys

from tools._cli import run_cli


def get_parser() -> argparse.ArgumentParser:
    from calibration.commission import HELD_OUT_FRACTION, RECOMMENDED_FRAMES

    p = argparse.ArgumentParser(prog="commission_line", description=__doc__)
    p.add_argument("--frames", required=True,
                   help=f"folder of camera frames, each with one OK part on this line ({RECOMMENDED_FRAMES}+ recommended; "
                        "record them with record_sequence)")
    p.add_argument("--model", required=True, help="model folder trained on this product")
    p.add_argument("--out", required=True, help="LINE.yaml to write; the line-fitted model goes to LINE_model/ beside it")
    p.add_argument("--target-false-alarms", type=float, default=0.01, metavar="RATE",
                   help="false-alarm rate on OK parts to set the threshold for (default 0.01: 1 %%)")
    p.add_argument("--part-images", metavar="DIR",
                   help="the product's OK part images (an MVTec folder or a folder of images, such as the model's "
                        "training images): with them the memories also learn each tile position of this line")
    p.add_argument("--held-out", type=float, default=HELD_OUT_FRACTION, metavar="FRACTION",
                   help=f"share of the frames kept out of the fit to set the threshold on (default {HELD_OUT_FRACTION})")
    return p


def main(argv: list[str] | None = None) -> int:
    args = get_parser().parse_args(argv)

    def go() -> None:
        from pathlib import Path

        from calibration.commission import commission_line, report_paths

        result = commission_line(args.frames, args.model, args.out, args.target_false_alarms, args.part_images,
                                 args.held_out)
        for note in result.notes:
            print(note)
        print(f"wrote {result.config}, {result.model}/ and the report {' and '.join(map(str, report_paths(Path(args.out))))}")

    return run_cli(go, "commission_line")


if __name__ == "__main__":
    sys.exit(main())
