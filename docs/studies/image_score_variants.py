"""Study: how the tile scores of an exported model are best combined into one image score.

Runs the detector once over the development ``test/`` split and scores each image with several
combinations of its full-scale (fine) and half-scale (coarse) tile scores. Prints image AUROC, NG
recall at <= 5 % false alarms (the line target's metric) and AUROC per defect type. The README's
image-score study figures come from this.

    python docs/studies/image_score_variants.py --model engines/models/magnetic_tile --data ../shared/datasets/magnetic_tile

``--model`` takes one or more model folders with a coarse memory. About 40 s per model on 2 CPU cores.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Callable

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from engines import metrics  # noqa: E402
from engines.backends.base import load_backend  # noqa: E402
from engines.data import mvtec_test_set, read_image  # noqa: E402
from engines.detector import Detector  # noqa: E402
from pipeline.benchmark import score_ranking  # noqa: E402

Combine = Callable[[np.ndarray, np.ndarray], float]


def top_mean(scores: np.ndarray, k: int) -> float:
    return float(np.sort(scores)[::-1][:k].mean())


# Alternatives to the shipped score (the detector's own, reported first).
VARIANTS: dict[str, Combine] = {
    "max fine": lambda f, c: float(f.max()),
    "max coarse": lambda f, c: float(c.max()),
    "max of both": lambda f, c: float(max(f.max(), c.max())),
    "mean of top-2 fine, max coarse": lambda f, c: 0.5 * (top_mean(f, 2) + c.max()),
    "0.4 max fine + 0.6 max coarse": lambda f, c: 0.4 * f.max() + 0.6 * c.max(),
    "0.6 max fine + 0.4 max coarse": lambda f, c: 0.6 * f.max() + 0.4 * c.max(),
}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", type=Path, nargs="+", required=True)
    p.add_argument("--data", type=Path, required=True)
    a = p.parse_args()
    samples = mvtec_test_set(a.data)
    types = np.array([s.defect_type for s in samples])
    labels = types != "good"
    for model in a.model:
        detector = Detector(load_backend("onnxruntime", model))
        if detector.meta.coarse_scale <= 0:
            print(f"{model}: no coarse memory (model.json coarse_scale is 0); nothing to compare")
            continue
        preds = [detector.predict(read_image(s.image_path, detector.meta.in_channels)) for s in samples]
        rows = {"detector (mean of max fine, max coarse)": np.array([p.score for p in preds])}
        rows.update({name: np.array([combine(p.tile_scores, p.coarse_scores) for p in preds])
                     for name, combine in VARIANTS.items()})
        print(f"\n{model}  ({len(samples)} images, {labels.sum()} defective)")
        print(f"{'image score':<40} {'AUROC':>6}  {'rec@5%':>6}  " + " ".join(f"{t[:7]:>7}" for t in sorted(set(types) - {'good'})))
        for name, scores in rows.items():
            recall = score_ranking(list(scores[labels]), list(scores[~labels]))["ng_recall_at_fa_0.05"]
            per_type = [metrics.roc_auc(labels[(types == t) | ~labels], scores[(types == t) | ~labels])
                        for t in sorted(set(types) - {"good"})]
            print(f"{name:<40} {metrics.roc_auc(labels, scores):>6.4f} {recall:>6.3f}  " + " ".join(f"{v:>7.3f}" for v in per_type))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
