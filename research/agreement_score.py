"""Study: image scores that read where the full-scale and the half-scale tile novelty agree.

For each image of the development ``test/`` split, and for each OK / NG part of the simulated line
sequences given with ``--line``, the tile scores are spread over the image (or canonical part) as
the minimum over covering tiles, and the *agreement peak* is the highest value of the lower of the
two spreads: the strongest place novel at both scales. Printed: image AUROC and NG recall at <= 5 %
false alarms on the split, then NG recall per sequence, its mean and the mean line AUROC, for

- the tile score (mean of the ``fine_top_k`` strongest full-scale tiles and the strongest half-scale one);
- the agreement peak alone; the tile score + 0.3 x the peak; the mean of the two (the rule the
  shipped model uses, ``both_scales_score_weight`` 0.5); the peak of *mean* spreads.

    python -m research.agreement_score --model engines/models/magnetic_tile --data ../shared/datasets/magnetic_tile --line SEQ...

About 1 minute for the split and 20 s per sequence on 2 CPU cores.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from engines import metrics
from engines.artifact import ModelMeta
from engines.backends.base import load_backend
from engines.data import mvtec_test_set, read_image
from engines.detector import Detector
from pipeline.vision.scoring import split_scores
from pipeline.benchmark import score_ranking
from pipeline.config import load_config
from pipeline.processing import Preprocessor
from pipeline.sim import sequence_parts
from pipeline.vision.tiling import TileGrid, scaled_tiles
from pipeline.vision.scoring import spread_scores


def variants(meta: ModelMeta, fine: np.ndarray, coarse: np.ndarray, fine_pos: np.ndarray, coarse_pos: np.ndarray,
             grid: TileGrid, coarse_grid: TileGrid, shape: tuple[int, int]) -> dict[str, float]:
    def peak(how: str) -> float:
        return float(np.minimum(spread_scores(fine, fine_pos, grid, shape, how),
                                spread_scores(coarse, coarse_pos, coarse_grid, shape, how)).max())

    tiles = 0.5 * (float(np.sort(fine)[::-1][:meta.fine_top_k].mean()) + float(coarse.max()))
    agree = peak("min")
    return {"tile score": tiles, "agreement peak": agree, "tile score + 0.3 x peak": tiles + 0.3 * agree,
            "mean of the two (shipped)": 0.5 * (tiles + agree), "peak of mean spreads": peak("mean")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--data", required=True)
    ap.add_argument("--line", type=Path, nargs="*", default=[], metavar="SEQ")
    ap.add_argument("--config", type=Path, default=Path("configs/demo_line.yaml"))
    a = ap.parse_args()
    meta = ModelMeta.load(a.model)
    backend = load_backend("onnxruntime", a.model)
    det = Detector(backend)
    rows, labels = [], []
    for s in mvtec_test_set(a.data):
        img = read_image(s.image_path, meta.in_channels)
        p = det.predict(img)
        _, grid = scaled_tiles(img, meta.tile_size, det.overlap)
        _, coarse_grid = scaled_tiles(img, meta.tile_size, det.overlap, meta.coarse_scale)
        rows.append(variants(meta, p.tile_scores, p.coarse_scores, np.arange(len(grid)), np.arange(len(coarse_grid)),
                             grid, coarse_grid, img.shape[:2]))
        labels.append(s.defect_type != "good")
    lab = np.array(labels)
    print(f"{a.model}: development split, image AUROC / NG recall at <= 5 % false alarms")
    for name in rows[0]:
        sc = np.array([r[name] for r in rows])
        print(f"  {name:<28} {metrics.roc_auc(lab, sc):.4f} / {score_ranking(list(sc[lab]), list(sc[~lab]))['ng_recall_at_fa_0.05']:.3f}")
    if not a.line:
        return
    prep = Preprocessor.for_model(load_config(a.config).preprocess, meta)
    recall: dict[str, list[float]] = {n: [] for n in rows[0]}
    auroc: dict[str, list[float]] = {n: [] for n in rows[0]}
    for seq in a.line:
        parts = []
        for t, frame in sequence_parts(seq):
            p = prep(frame)
            if p.verdict is not None:  # no part found: a miss for every variant
                parts.append((t["verdict"], None))
                continue
            _, scores = backend.infer(meta.normalise(p.tiles))
            n_fine = int((p.tile_index < len(p.grid)).sum())
            fine, coarse = split_scores(scores, n_fine)
            parts.append((t["verdict"], variants(meta, fine, coarse, p.tile_index[:n_fine], p.tile_index[n_fine:] - len(p.grid),
                                                 p.grid, p.coarse_grid, (p.grid.height, p.grid.width))))
        for name in recall:
            r = score_ranking([v[name] if v else None for k, v in parts if k == "NG"],
                              [v[name] if v else None for k, v in parts if k == "OK"])
            recall[name].append(r["ng_recall_at_fa_0.05"])
            auroc[name].append(r["score_auroc"])
    print(f"simulated line ({', '.join(s.name for s in a.line)}): NG recall at <= 5 % false alarms | mean | mean line AUROC")
    for name in recall:
        print(f"  {name:<28} " + " ".join(f"{x:.2f}" for x in recall[name])
              + f" | {np.mean(recall[name]):.3f} | {np.mean(auroc[name]):.4f}")


if __name__ == "__main__":
    main()
