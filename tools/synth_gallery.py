"""synth-gallery: a PNG grid of OK crops, synthetic defects (faint to strong) and their masks."""
from __future__ import annotations

import argparse
import sys

from tools._cli import run_cli


def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="synth-gallery", description=__doc__)
    p.add_argument("--data", required=True, help="folder of OK images or MVTec-style folder")
    p.add_argument("--out", default="synth_gallery.png", help="PNG to write; default %(default)s")
    p.add_argument("--per-row", type=int, default=4, help="examples per generator, faint to strong")
    p.add_argument("--seed", type=int, default=0, help="seed of the defects drawn; default %(default)s")
    return p


def main(argv: list[str] | None = None) -> int:
    args = get_parser().parse_args(argv)

    def go() -> None:
        from engines.gallery import write_gallery

        print(f"wrote {write_gallery(args.data, args.out, args.per_row, args.seed)}")

    return run_cli(go, "synth-gallery")


if __name__ == "__main__":
    sys.exit(main())
