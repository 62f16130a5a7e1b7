"""calibrate_line: from 5-10 frames of OK parts on the belt, write a complete, commented line config."""
from __future__ import annotations

import argparse
import sys

from tools._cli import run_cli


def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="calibrate_line", description=__doc__)
    p.add_argument("--frames", required=True, help="folder of camera frames, each with one OK part")
    p.add_argument("--model", required=True, help="model folder")
    p.add_argument("--out", required=True, help="LINE.yaml to write")
    return p


def main(argv: list[str] | None = None) -> int:
    args = get_parser().parse_args(argv)

    def go() -> None:
        from calibration.line import calibrate_line
        from pipeline.config import load_config

        cal = calibrate_line(args.frames, args.model, args.out)
        load_config(args.out)  # what we wrote must be accepted by run_pipeline
        for note in cal.notes:
            print(note)
        print(f"wrote {args.out}")

    return run_cli(go, "calibrate_line")


if __name__ == "__main__":
    sys.exit(main())
