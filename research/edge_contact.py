"""Study: how much of a part's located outline lies on the frame's edge, for parts wholly in view and
parts the frame cuts, against the simulator's truth (``pipeline.vision.locate.edge_contact``).

For each line seed the belt model is chosen as calibration chooses it (``choose_belt`` on
``--fit-frames`` recorded OK frames of training parts), every test part is located as the line
locates it, and for each part whose silhouette touches the frame's edge or whose true corners lie
beyond it, one row: how far its true outline is inside the frame (px, negative: that far out of
view), and two contacts with the edge as fractions of its outline: "outline", every silhouette pixel
on the edge; "surface", only those unlike the belt by their own value (what the line reads). The
summary counts the parts wholly in view (1 px or more inside) taken for cut and the parts cut by
2 px or more that are missed, by the outline (at 0.03) and by the surface (at ``--limit``).

    python -m research.edge_contact --data ../shared/datasets/magnetic_tile --lines 100-119

About 5 s per line on 2 CPU cores.
"""
from __future__ import annotations

import argparse

import cv2
import numpy as np

from pipeline.config import PreprocessConfig
from pipeline.sim import simulate
from pipeline.vision.locate import cut_by_edge, edge_contact, locate_silhouette
from research._lines import MIN_AREA, add_line_options, line_belt, overrides
from tools.commission_bench import _seeds


def line_edges(data: str, seed: int, fit_frames: int, ok: int, ng: int,
               changes: dict[str, str] | None = None) -> list[dict]:
    """One row per part of this line that touches or crosses the frame's edge."""
    g, belt = line_belt(data, seed, fit_frames, changes)
    cfg = PreprocessConfig()
    rows = []
    for i, f in enumerate(simulate(data, ok, ng, 0, seed=seed, geometry=g)):
        bgr = f.frame if f.frame.ndim == 3 else cv2.cvtColor(f.frame, cv2.COLOR_GRAY2BGR)  # as the line reads it
        found = locate_silhouette(bgr, belt, MIN_AREA, tuple(cfg.canonical_size), cfg.downscale)
        truth = np.array(f.truth["corners"])
        h, w = f.frame.shape[:2]
        margin = float(min(truth[:, 0].min(), truth[:, 1].min(), w - 1 - truth[:, 0].max(), h - 1 - truth[:, 1].max()))
        outline = edge_contact(found[1])[0] if found is not None else float("nan")
        surface = cut_by_edge(bgr, found[1], belt, cfg.downscale)[0] if found is not None else float("nan")
        if margin < 0 or outline > 0:
            rows.append({"line": seed, "frame": i, "margin": margin, "outline": outline, "surface": surface,
                         "features": belt.features})
    return rows


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_line_options(ap, "100-119")
    ap.add_argument("--limit", type=float, default=PreprocessConfig().max_edge_contact,
                    help="the surface contact taken for a cut (default: preprocess.max_edge_contact's)")
    args = ap.parse_args(argv)
    rows = []
    seeds = _seeds(args.lines)
    print(f"{'line':>4} {'frame':>5} {'features':>8} {'inside px':>9} {'outline':>8} {'surface':>8}")
    for seed in seeds:
        for r in line_edges(args.data, seed, args.fit_frames, args.ok, args.ng, overrides(args)):
            print(f"{r['line']:>4} {r['frame']:>5} {r['features']:>8} {r['margin']:>+9.1f} {r['outline']:>8.4f} "
                  f"{r['surface']:>8.4f}", flush=True)
            rows.append(r)
    print(f"{len(seeds) * (args.ok + args.ng)} parts on {len(seeds)} lines; {len(rows)} at or through the edge")
    inside = [r for r in rows if r["margin"] >= 1]
    cut = [r for r in rows if r["margin"] <= -2]
    for key, limit in (("outline", 0.03), ("surface", args.limit)):
        print(f"{key} >= {limit}: {sum(r[key] >= limit for r in inside)} of {len(inside)} parts wholly in view (1 px or "
              f"more inside) that touch the edge taken for cut (largest {max((r[key] for r in inside), default=0):.4f}); "
              f"{sum(not r[key] >= limit for r in cut)} of {len(cut)} parts 2 px or more out of view missed")


if __name__ == "__main__":
    main()
