"""Study: how much of a part's located outline lies on the frame's edge, for parts wholly in view and
parts the frame cuts, against the simulator's truth (``pipeline.vision.locate.edge_contact``).

For each line seed the belt model is chosen as calibration chooses it (``choose_belt`` on
``--fit-frames`` recorded OK frames of training parts), every test part is located as the line
locates it, and for each part whose silhouette touches the frame's edge or whose true corners lie
beyond it, one row: how far its true outline is inside the frame (px, negative: that far out of
view) and the fraction of its located outline on the edge. The summary gives the largest contact
of a part wholly in view (1 px or more inside) and the smallest of a part cut by 2 px or more.

    python -m research.edge_contact --data ../shared/datasets/magnetic_tile --lines 100-119

About 5 s per line on 2 CPU cores.
"""
from __future__ import annotations

import argparse

import cv2
import numpy as np

from calibration.line import choose_belt
from pipeline.config import PreprocessConfig
from pipeline.sim import LineGeometry, simulate
from pipeline.vision.locate import edge_contact, part_at, silhouette_in_view
from tools.commission_bench import _seeds

MIN_AREA = 2000  # camera px: the smallest blob taken for a part here (parts are 80,000 px and more)


def line_edges(data: str, seed: int, fit_frames: int, ok: int, ng: int) -> list[dict]:
    """One row per part of this line that touches or crosses the frame's edge."""
    g = LineGeometry.random(seed)
    cfg = PreprocessConfig()
    fit = [f.frame for f in simulate(data, fit_frames, 0, 0, seed=seed + 5000, geometry=g, ok_from="train/good")]
    belt, _ = choose_belt(fit, "mono" if g.mono else "colour", cfg.downscale)
    rows = []
    for i, f in enumerate(simulate(data, ok, ng, 0, seed=seed, geometry=g)):
        bgr = f.frame if f.frame.ndim == 3 else cv2.cvtColor(f.frame, cv2.COLOR_GRAY2BGR)
        seen = silhouette_in_view(bgr, belt, cfg.downscale)
        found = part_at(seen, MIN_AREA, tuple(cfg.canonical_size), cfg.downscale)
        truth = np.array(f.truth["corners"])
        h, w = f.frame.shape[:2]
        margin = float(min(truth[:, 0].min(), truth[:, 1].min(), w - 1 - truth[:, 0].max(), h - 1 - truth[:, 1].max()))
        contact = edge_contact(found[1])[0] if found is not None else float("nan")
        if margin < 0 or contact > 0:
            rows.append({"line": seed, "frame": i, "margin": margin, "contact": contact})
    return rows


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", required=True, help="MVTec-style folder (train/good and test/)")
    ap.add_argument("--lines", default="100-119", help="line seeds, e.g. 100-119 or 210,212")
    ap.add_argument("--fit-frames", type=int, default=12, help="recorded OK frames the belt is fitted on")
    ap.add_argument("--ok", type=int, default=20)
    ap.add_argument("--ng", type=int, default=20)
    args = ap.parse_args(argv)
    rows = []
    seeds = _seeds(args.lines)
    print(f"{'line':>4} {'frame':>5} {'inside px':>9} {'contact':>8}")
    for seed in seeds:
        for r in line_edges(args.data, seed, args.fit_frames, args.ok, args.ng):
            print(f"{r['line']:>4} {r['frame']:>5} {r['margin']:>+9.1f} {r['contact']:>8.3f}", flush=True)
            rows.append(r)
    inside = [r["contact"] for r in rows if r["margin"] >= 1]
    cut = [r["contact"] for r in rows if r["margin"] <= -2]
    print(f"{len(seeds) * (args.ok + args.ng)} parts on {len(seeds)} lines; {len(rows)} at or through the edge")
    print(f"wholly in view (1 px or more inside), touching the edge: {len(inside)}, largest contact "
          f"{max(inside, default=0):.3f}")
    print(f"cut by the edge (2 px or more out of view): {len(cut)}, smallest contact {np.nanmin(cut) if cut else 0:.3f}, "
          f"under 0.03: {sum(not c >= 0.03 for c in cut)}")


if __name__ == "__main__":
    main()
