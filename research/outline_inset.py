"""Study: how many canonical px along the located outline should a line leave out?

The silhouette locator finds a part's outline to about a camera px; where it lies just outside the
part, the rectified view's edge holds a sliver of belt, and the part's own edge (a bevel, a chip of
the grinding) is where OK parts score highest. ``preprocess.outline_inset_px`` stretches the
rectified view so that the located outline lies that many canonical px outside it. Not adopted: it
exists with ``git apply research/results/outline_inset.patch`` (on b6b98f7's parent), which also
makes calibration set it where it sees a belt sliver; this study needs the patch applied.

This study takes lines that ``commission_bench`` left behind (each ``LINE/`` folder: ``line.yaml``,
``line_model/``, ``ok_frames/``, ``test/`` with its truth) and, for each inset, scores the line's test
parts and its held-out OK frames as the line does (``calibration.line.part_scores``): part-score
AUROC, NG recall at the best threshold for 5 % false alarms, and NG recall and false alarms at the
threshold the held-out frames give for the commissioning target. The memories are those the bench
fitted without an inset (nothing is commissioned again), so the figures say which way an inset goes,
not what a line commissioned with it gets: ``commission_bench`` measures that.

    python -m research.outline_inset runs/cb_tune/line100 runs/cb_tune/line101 ... --insets 0,1,2,3,4

About 15-25 s per line and inset on 2 CPU cores. With ``--rings``, instead: the mean grey of each
line's first 12 fit frames' parts, rectified without an inset, ring by ring from the outermost px,
the belt's grey, and the inset calibration takes from them (``calibration.line.outline_inset``).
"""
from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path

import numpy as np

TARGET = 0.03


def inset_scores(line: Path, insets: list[float]) -> dict[float, dict[str, list[float]]]:
    """For each inset: the test parts' OK and NG scores and the held-out OK frames' scores (-1 where
    no part was inspected; held-out frames without one are left out, as commissioning does)."""
    import cv2

    from calibration.commission import split_frames
    from calibration.line import part_scores
    from engines.artifact import model_paths
    from engines.backends import load_backend
    from pipeline.config import load_config
    from pipeline.processing import Preprocessor
    from pipeline.sim import sequence_parts
    from pipeline.sources import image_files

    cfg = load_config(line / "line.yaml")
    model = line / "line_model"
    _, meta = model_paths(model)
    engine = load_backend("onnxruntime", model)
    parts = list(sequence_parts(line / "test"))
    held = [cv2.imread(str(f), cv2.IMREAD_COLOR) for f in split_frames(image_files(line / "ok_frames"))[1]]
    out = {}
    for px in insets:
        prep = Preprocessor.for_model(replace(cfg.preprocess, outline_inset_px=px), meta)
        scores = part_scores(prep, model, [f for _, f in parts], cfg.decision, engine)
        by = {"OK": [], "NG": []}
        for (truth, _), s in zip(parts, scores):
            if truth["verdict"] in by:
                by[truth["verdict"]].append(s if isinstance(s, float) else -1.0)
        kept = [s for s in part_scores(prep, model, held, cfg.decision, engine) if isinstance(s, float)]
        out[px] = {"ok": by["OK"], "ng": by["NG"], "held": kept}
    return out


def rings(line: Path, frames: int = 12) -> tuple[float, list[float], float]:
    """(the belt's grey, the ring means, the inset calibration sets) on ``frames`` of the line's fit
    frames, spread over them as commissioning picks its calibration frames."""
    import cv2

    from calibration.commission import split_frames
    from calibration.line import outline_inset
    from engines.artifact import model_paths
    from pipeline.config import load_config
    from pipeline.processing import Preprocessor
    from pipeline.sources import image_files
    from pipeline.vision.belt import border_lightness
    from pipeline.vision.rectify import rectify

    cfg = load_config(line / "line.yaml")
    prep = Preprocessor.for_model(replace(cfg.preprocess, outline_inset_px=0.0), model_paths(line / "line_model")[1])
    fit = split_frames(image_files(line / "ok_frames"))[0]
    views, belts = [], []
    for f in fit[:: max(1, len(fit) // frames)][:frames]:
        frame = cv2.imread(str(f), cv2.IMREAD_COLOR)
        p = prep(frame)
        if p.verdict is None:
            views.append(cv2.cvtColor(rectify(frame, p.H, prep.wh), cv2.COLOR_BGR2GRAY).astype(np.float32))
            belts.append(border_lightness(frame))
    belt = float(np.median(belts))
    inset, means = outline_inset(views, belt)
    return belt, means, inset


def figures(scores: dict[str, list[float]], target: float = TARGET) -> tuple[float, float, float, float]:
    """(AUROC, recall at the best threshold for 5 % false alarms, recall and false alarms at the
    held-out frames' threshold for ``target``)."""
    from calibration.commission import choose_threshold
    from pipeline.benchmark import score_ranking

    rank = score_ranking(scores["ng"], scores["ok"])
    threshold, _ = choose_threshold(scores["held"], target)
    ok, ng = np.asarray(scores["ok"]), np.asarray(scores["ng"])
    return (rank["score_auroc"], rank["ng_recall_at_fa_0.05"], float((ng >= threshold).mean()),
            float((ok >= threshold).mean()))


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("lines", nargs="+", type=Path, help="LINE folders left by commission_bench")
    ap.add_argument("--insets", default="0,1,2,3,4", help="canonical px, comma-separated")
    ap.add_argument("--target", type=float, default=TARGET, help="commissioning false-alarm target")
    ap.add_argument("--rings", action="store_true", help="print each line's ring means and the inset calibration sets")
    args = ap.parse_args(argv)
    if args.rings:
        print("line: belt grey; mean grey of the rectified parts' rings, outermost first -> inset px")
        for line in args.lines:
            belt, means, inset = rings(line)
            print(f" {line.parent.name}/{line.name}: belt {belt:.0f}; " + " ".join(f"{m:.0f}" for m in means)
                  + f" -> {inset:g}", flush=True)
        return
    insets = [float(v) for v in args.insets.split(",")]
    table = {px: [] for px in insets}
    print("line: per inset px, AUROC / best rec. / NG recall and false alarms at the line's threshold")
    for line in args.lines:
        per = inset_scores(line, insets)
        cells = []
        for px in insets:
            row = figures(per[px], args.target)
            table[px].append(row)
            cells.append(f"{px:g}: {row[0]:.3f}/{row[1]:.3f}/{row[2]:.3f}/{row[3]:.3f}")
        print(f" {line.parent.name}/{line.name}  " + "  ".join(cells), flush=True)
    print("inset: mean AUROC, mean best rec., mean NG recall at the line's threshold, mean (max) false alarms")
    for px, rows in table.items():
        a = np.array(rows)
        print(f"  {px:g}: {a[:, 0].mean():.3f}  {a[:, 1].mean():.3f}  {a[:, 2].mean():.3f}  "
              f"{a[:, 3].mean():.3f} ({a[:, 3].max():.3f})")


if __name__ == "__main__":
    main()
