"""simulate_line: a recorded sequence of a simulated line (parts of an MVTec-style test split placed
at random pose on a moving belt, plus empty-belt frames) with truth.jsonl, for benchmarks and tests."""
from __future__ import annotations

import argparse
import sys

from tools._cli import run_cli


def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="simulate_line", description=__doc__)
    p.add_argument("--data", required=True, help="MVTec-style folder; parts come from its test/ split")
    p.add_argument("--out", required=True, help="sequence folder to write (frames, sequence.jsonl, truth.jsonl)")
    p.add_argument("--ok", type=int, default=50, help="frames with an OK part")
    p.add_argument("--ng", type=int, default=50, help="frames with a defective part")
    p.add_argument("--empty", type=int, default=5, help="empty-belt frames")
    p.add_argument("--corrupt-every", type=int, default=0, help="replace every N-th frame file by garbage (0: none)")
    p.add_argument("--width", type=int, default=640)
    p.add_argument("--height", type=int, default=480)
    p.add_argument("--fps", type=float, default=10.0)
    p.add_argument("--ext", default=".png", choices=[".png", ".jpg"])
    p.add_argument("--ok-from", default="test/good", choices=["test/good", "train/good"],
                   help="where OK parts come from; train/good makes frames to fit a model's tile memory on "
                        "(export_model --memory-data SEQ --memory-line LINE.yaml), never to judge one")
    p.add_argument("--seed", type=int, default=0)
    return p


def main(argv: list[str] | None = None) -> int:
    args = get_parser().parse_args(argv)

    def go() -> None:
        from pipeline.sim import simulate, write_sequence

        frames = simulate(args.data, args.ok, args.ng, args.empty, seed=args.seed, size=(args.width, args.height),
                          ok_from=args.ok_from)
        seq = write_sequence(frames, args.out, fps=args.fps, corrupt_every=args.corrupt_every, ext=args.ext)
        print(f"wrote {len(frames)} frames to {seq} (truth in {seq / 'truth.jsonl'})")

    return run_cli(go, "simulate_line")


if __name__ == "__main__":
    sys.exit(main())
