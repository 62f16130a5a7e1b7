"""Study: which false-alarm target should a line be commissioned at, to stay under a 5 % bar?

``commission_line`` sets the threshold on the held-out OK frames so that at most ``target`` of
them are alarms. With 90 held-out frames a target of 2 % allows one alarm, and the threshold can
sit far above most NG parts when one held-out OK frame scores high. This study takes lines that
``commission_bench`` left behind (each ``LINE/`` folder: ``line.yaml``, ``line_model/``,
``line.commissioning.json`` with the held-out scores, ``test/`` with its truth), scores each line's
test parts as the line does (``calibration.line.part_scores``), and for each target re-derives the
threshold from the same held-out scores (``choose_threshold``) and prints NG recall and false
alarms on the test parts. Nothing is commissioned again: the memories and the held-out scores are
those of the bench run.

    python -m research.commission_target runs/cb_tune/line102 runs/cb_tune/line104 ...

About 25 s per line on 2 CPU cores.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

TARGETS = (0.01, 0.02, 0.03, 0.04, 0.05)
BAR = 0.05


def line_scores(line: Path, model: Path | None = None) -> dict[str, list[float]]:
    """The held-out OK scores of a bench line and its test parts' scores (-1 where no part was located).
    With ``model`` (another fit of the line's memories) the held-out frames are scored again with it,
    those without a part inspected left out as commissioning leaves them; else their scores are read
    from the line's commissioning report."""
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
    folder = model or line / "line_model"
    _, meta = model_paths(folder)
    prep = Preprocessor.for_model(cfg.preprocess, meta)
    engine = load_backend("onnxruntime", folder)
    parts = list(sequence_parts(line / "test"))
    scores = part_scores(prep, folder, [f for _, f in parts], cfg.decision, engine)
    out: dict[str, list[float]] = {"OK": [], "NG": []}
    for (truth, _), s in zip(parts, scores):
        out[truth["verdict"]].append(s if isinstance(s, float) else -1.0)
    if model is None:
        held = json.loads((line / "line.commissioning.json").read_text())["held_out_scores"]
    else:
        frames = [cv2.imread(str(f), cv2.IMREAD_COLOR) for f in split_frames(image_files(line / "ok_frames"))[1]]
        held = [s for s in part_scores(prep, folder, frames, cfg.decision, engine) if isinstance(s, float)]
    return {"held": held, "ok": out["OK"], "ng": out["NG"]}


def at_targets(scores: dict[str, list[float]], targets=TARGETS) -> list[tuple[float, float, float]]:
    """(target, NG recall, false-alarm rate) on the test parts, the threshold from the held-out scores."""
    from calibration.commission import choose_threshold

    ok, ng = np.asarray(scores["ok"]), np.asarray(scores["ng"])
    rows = []
    for t in targets:
        threshold, _ = choose_threshold(scores["held"], t)
        rows.append((t, float((ng >= threshold).mean()), float((ok >= threshold).mean())))
    return rows


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("lines", nargs="+", type=Path, help="LINE folders written by commission_bench")
    args = p.parse_args()
    per_target: dict[float, list[tuple[float, float]]] = {t: [] for t in TARGETS}
    for line in args.lines:
        rows = at_targets(line_scores(line))
        print(f"{line.name:>8}  " + "  ".join(f"{t:.2f}: {r:.3f}/{fa:.3f}" for t, r, fa in rows), flush=True)
        for t, r, fa in rows:
            per_target[t].append((r, fa))
    print("target: NG recall mean (min), false alarms mean (max), lines over the 5 % bar")
    for t, v in per_target.items():
        a = np.array(v)
        print(f"  {t:.2f}: {a[:, 0].mean():.3f} ({a[:, 0].min():.3f}), {a[:, 1].mean():.3f} ({a[:, 1].max():.3f}), "
              f"{int((a[:, 1] > BAR + 1e-9).sum())} of {len(a)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
