"""Study: how well does a line find its parts' corners, against the simulator's truth?

For each line seed, the belt model is chosen as calibration chooses it (``choose_belt`` on
``--fit-frames`` recorded OK frames of training parts, at the line's locating scale), then every
test frame is located as the pipeline locates it (``locate_silhouette``). For each located part
and each of its four true corners: how far the nearest located corner sits inside (+) or outside
(-) the true one, measured towards the part's centre, and how far it is from it at all. Empty-belt
frames count as false parts when anything is located on them.

    python -m research.mono_outlines --data ../shared/datasets/magnetic_tile --lines 100-109

About 10 s per line on 2 CPU cores.
"""
from __future__ import annotations

import argparse

import numpy as np

from pipeline.config import PreprocessConfig
from pipeline.sim import simulate
from pipeline.vision.locate import locate_silhouette
from research._lines import MIN_AREA, add_line_options, line_belt, overrides
from tools.commission_bench import _seeds


def line_outlines(data: str, seed: int, fit_frames: int, ok: int, ng: int, empty: int,
                  changes: dict[str, str] | None = None) -> dict:
    """Corner offsets of one line: inward and distance per true corner, and the counts."""
    g, belt = line_belt(data, seed, fit_frames, changes)
    downscale = PreprocessConfig().downscale
    inward, dist, located, parts, false_parts = [], [], 0, 0, 0
    for f in simulate(data, ok, ng, empty, seed=seed, geometry=g):
        found = locate_silhouette(f.frame, belt, MIN_AREA, tuple(PreprocessConfig().canonical_size), downscale)
        if "corners" not in f.truth:
            false_parts += found is not None
            continue
        parts += 1
        if found is None:
            continue
        located += 1
        corners, truth = found[0], np.array(f.truth["corners"])
        centre = truth.mean(axis=0)
        for t in truth:
            c = corners[np.argmin(np.linalg.norm(corners - t, axis=1))]
            inward.append(np.linalg.norm(t - centre) - np.linalg.norm(c - centre))
            dist.append(np.linalg.norm(c - t))
    return {"line": seed, "camera": "mono" if g.mono else "colour", "belt": g.belt_bgr, "features": belt.features,
            "inward_mean": float(np.mean(inward)), "inward_median": float(np.median(inward)),
            "error_mean": float(np.mean(dist)), "error_p90": float(np.percentile(dist, 90)),
            "located": located, "parts": parts, "false_parts": false_parts, "empty": empty}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_line_options(ap, "100-109")
    ap.add_argument("--empty", type=int, default=10, help="empty-belt frames")
    args = ap.parse_args(argv)
    print(f"{'line':>4} {'camera':6} {'belt':>15} {'features':8} {'inward mean':>11} {'median':>7} "
          f"{'|err| mean':>10} {'p90':>6} {'located':>8} {'false parts':>11}")
    for seed in _seeds(args.lines):
        r = line_outlines(args.data, seed, args.fit_frames, args.ok, args.ng, args.empty, overrides(args))
        print(f"{r['line']:>4} {r['camera']:6} {str(r['belt']):>15} {r['features']:8} {r['inward_mean']:>+11.1f} "
              f"{r['inward_median']:>+7.1f} {r['error_mean']:>10.1f} {r['error_p90']:>6.1f} "
              f"{r['located']:>3}/{r['parts']:<4} {r['false_parts']:>5}/{r['empty']}", flush=True)


if __name__ == "__main__":
    main()
