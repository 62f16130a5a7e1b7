"""make_demo: build the bundled demo line (calibration, a short recorded sequence with OK and
defective parts on a belt, truth and golden results) from an MVTec-style data set and a model."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tools._cli import run_cli


def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="make_demo", description=__doc__)
    p.add_argument("--data", required=True, help="MVTec-style folder (test/ parts are placed on the belt)")
    p.add_argument("--model", required=True, help="model folder")
    p.add_argument("--out", default="configs/demo", help="demo folder (sequence/, calibration frames, golden)")
    p.add_argument("--config", default="configs/demo_line.yaml", help="line config to write")
    p.add_argument("--ok", type=int, default=10, help="frames with an OK part; default %(default)s")
    p.add_argument("--ng", type=int, default=10, help="frames with a defective part; default %(default)s")
    p.add_argument("--empty", type=int, default=2, help="empty-belt frames; default %(default)s")
    p.add_argument("--seed", type=int, default=2026,
                   help="seed of the calibration frames (the sequence uses the next one); default %(default)s")
    return p


def main(argv: list[str] | None = None) -> int:
    args = get_parser().parse_args(argv)

    def go() -> None:
        import cv2

        from calibration.line import calibrate_line
        from pipeline.sim import simulate, write_sequence
        from pipeline.supervisor import run_pipeline

        out = Path(args.out)
        calib = out / "calibration_frames"
        calib.mkdir(parents=True, exist_ok=True)
        for i, f in enumerate(simulate(args.data, n_ok=6, n_ng=0, n_empty=0, seed=args.seed)):
            cv2.imwrite(str(calib / f"{i:02d}.jpg"), f.frame, [cv2.IMWRITE_JPEG_QUALITY, 95])
        cal = calibrate_line(calib, args.model, args.config)
        for note in cal.notes:
            print(note)
        frames = simulate(args.data, args.ok, args.ng, args.empty, seed=args.seed + 1)
        seq = write_sequence(frames, out / "sequence", fps=5.0, corrupt_every=11, ext=".jpg")
        (out / "golden.jsonl").unlink(missing_ok=True)  # rebuilt, not a run's results to keep aside
        code = run_pipeline(args.config, f"replay:{seq}", out / "golden.jsonl", show_status=False)
        (out / "golden.jsonl.config.yaml").unlink(missing_ok=True)
        print(f"wrote {args.config}, {seq} ({len(frames)} frames) and {out / 'golden.jsonl'} (exit {code})")

    return run_cli(go, "make_demo")


if __name__ == "__main__":
    sys.exit(main())
