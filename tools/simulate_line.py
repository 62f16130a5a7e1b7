"""simulate_line: a recorded sequence of a simulated line (parts of an MVTec-style test split placed
at random pose on a moving belt, plus empty-belt frames) with truth.jsonl, for benchmarks and tests."""
from __future__ import annotations

import argparse
import dataclasses
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
    p.add_argument("--width", type=int, default=640, help="camera px")
    p.add_argument("--height", type=int, default=480, help="camera px")
    p.add_argument("--part-size", type=int, default=300, help="the part's long side in camera px")
    p.add_argument("--max-angle", type=float, default=12.0, help="part rotation, degrees either way")
    p.add_argument("--perspective", type=float, default=0.03, help="corner jitter as a fraction of the part size")
    p.add_argument("--belt-bgr", default="60,110,40", metavar="B,G,R", help="belt colour")
    p.add_argument("--lighting-drift", type=float, default=0.0, help="brightness swing over the sequence (0.1: +-10 %%)")
    p.add_argument("--vignetting", type=float, default=0.0,
                   help="light falling off towards the corners: 0.2 gives them 20 %% less than the centre")
    p.add_argument("--light-slope", type=float, default=0.0,
                   help="a lamp to one side: the light rises by this fraction of its mean from the left edge to the right "
                        "(0.3: from 0.85 to 1.15)")
    p.add_argument("--mono", action="store_true", help="a mono camera: one-channel frames")
    p.add_argument("--sensor-noise", type=float, default=0.0,
                   help="the sensor's noise, grey levels (sigma), per channel on a colour camera; default %(default)s")
    p.add_argument("--line-seed", type=int, metavar="N",
                   help="draw the whole line geometry at random from N (overrides the options above but --vignetting "
                        "and --light-slope; the same N, the same line); written to OUT/line.json")
    p.add_argument("--fps", type=float, default=10.0, help="the recorded pace (capture times); default %(default)s")
    p.add_argument("--ext", default=".png", choices=[".png", ".jpg"], help="frame file format; default %(default)s")
    p.add_argument("--ok-from", default="test/good", choices=["test/good", "train/good"],
                   help="where OK parts come from; train/good makes frames to fit a model's tile memory on "
                        "(export_model --memory-data SEQ --memory-line LINE.yaml), never to judge one")
    p.add_argument("--seed", type=int, default=0, help="seed of the parts, poses and order; default %(default)s")
    return p


def main(argv: list[str] | None = None) -> int:
    args = get_parser().parse_args(argv)

    def go() -> None:
        from pipeline.sim import LineGeometry, simulate, write_geometry, write_sequence

        if args.line_seed is not None:  # a random line is evenly lit unless asked otherwise
            geometry = dataclasses.replace(LineGeometry.random(args.line_seed), vignetting=args.vignetting,
                                           light_slope=args.light_slope)
        else:
            try:
                bgr = tuple(int(v) for v in args.belt_bgr.split(","))
            except ValueError:
                bgr = ()
            if len(bgr) != 3 or not all(0 <= v <= 255 for v in bgr):
                raise ValueError(f"--belt-bgr {args.belt_bgr!r}: give three numbers 0-255, B,G,R")
            geometry = LineGeometry(args.width, args.height, args.part_size, args.max_angle, args.perspective, bgr,
                                    lighting_drift=args.lighting_drift, mono=args.mono,
                                    sensor_noise=args.sensor_noise, vignetting=args.vignetting,
                                    light_slope=args.light_slope)
        if geometry.part_long_side + 40 > min(geometry.width, geometry.height) * 1.3:
            raise ValueError(f"--part-size {geometry.part_long_side}: the part would not fit a "
                             f"{geometry.width}x{geometry.height} view; give a smaller part or a larger view")
        frames = simulate(args.data, args.ok, args.ng, args.empty, seed=args.seed, ok_from=args.ok_from,
                          geometry=geometry)
        seq = write_sequence(frames, args.out, fps=args.fps, corrupt_every=args.corrupt_every, ext=args.ext)
        write_geometry(geometry, seq)
        print(f"wrote {len(frames)} frames to {seq} (truth in {seq / 'truth.jsonl'}; geometry in {seq / 'line.json'})")

    return run_cli(go, "simulate_line")


if __name__ == "__main__":
    sys.exit(main())
