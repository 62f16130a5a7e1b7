"""Study: what an ensemble of independently trained weights would buy over one of them.

Runs each exported model (same recipe, different seeds) once over the development ``test/`` split,
as the detector does (full- and half-scale tiles, overlap 0.25), and scores every model alone and
every combination of two or more by averaging their segmentation maps and their novelty (the two
tile-score spreads that the detector adds to the map, and the image score). Prints image AUROC,
NG recall at 5 % false alarms (the line's measure, here over the split's good images), pixel AUROC
and AUPRO (FPR 0.3). With ``--sequences``, also runs the line (``run_pipeline`` on each recorded
sequence, once per model, as fast as possible) and scores each combination by averaging the
models' part scores: line AUROC and NG recall at <= 5 % false alarms against the sequence's
``truth.jsonl`` (``pipeline.benchmark.score_ranking``). The index research/README.md gives its result.

    python -m research.seed_ensemble --models M0 M1 M2 --data ../shared/datasets/magnetic_tile \
        [--sequences SEQ ... --config configs/demo_line.yaml]

About 45 s per model on 2 CPU cores for magnetic tile, and 10 s per model and sequence of 126 frames.
"""
from __future__ import annotations

import argparse
import itertools
import json
import tempfile
from pathlib import Path

import numpy as np

from engines import metrics
from engines.backends.base import load_backend
from engines.data import mvtec_test_set, read_image, read_mask
from engines.detector import Detector
from pipeline.vision.scoring import split_scores
from pipeline.benchmark import FALSE_ALARM_BUDGET, score_ranking
from pipeline.vision.tiling import scaled_tiles, stitch
from pipeline.vision.scoring import image_score

RECALL = f"ng_recall_at_fa_{FALSE_ALARM_BUDGET:g}"


def recall_at(labels: np.ndarray, scores: np.ndarray) -> float:
    """NG recall at <= 5 % false alarms over the split's good images, as the line's benchmark counts it."""
    return score_ranking(list(scores[labels]), list(scores[~labels]))[RECALL]


def line_scores(model: Path, seq: Path, config: Path, work: Path) -> dict[str, float | None]:
    """Part score by file name from one replay of ``seq`` through the line with ``model``."""
    from pipeline.config import dump_config, load_config
    from pipeline.supervisor import run_pipeline

    cfg = load_config(config)
    cfg.inference.model = str(model.resolve())
    cfg.source.realtime = False
    results = work / "results.jsonl"
    results.unlink(missing_ok=True)
    if run_pipeline(dump_config(cfg, work / "line.yaml"), f"replay:{seq}", results, show_status=False) != 0:
        raise SystemExit(f"{seq}: the line did not finish with {model}")
    return {r["source_name"]: r.get("score") for r in map(json.loads, results.read_text().splitlines())}


def line_table(models: list[Path], sequences: list[Path], config: Path) -> None:
    combos = [c for size in range(1, len(models) + 1) for c in itertools.combinations(range(len(models)), size)]
    print(f"line ({config}): AUROC / NG recall at <= {FALSE_ALARM_BUDGET:.0%} false alarms per sequence")
    with tempfile.TemporaryDirectory(prefix="ensemble-") as tmp:
        per_seq = []
        for seq in sequences:
            truth = {t["file"]: t["verdict"] for t in map(json.loads, (seq / "truth.jsonl").read_text().splitlines())}
            scores = [line_scores(m, seq, config, Path(tmp)) for m in models]
            parts = [n for n in truth if truth[n] in ("OK", "NG")]
            row = {}
            for combo in combos:  # a part without a score (NO_PART, ERROR) in any model stays unscored
                avg = {n: None if any(scores[k].get(n) is None for k in combo)
                       else float(np.mean([scores[k][n] for k in combo])) for n in parts}
                r = score_ranking([avg[n] for n in parts if truth[n] == "NG"], [avg[n] for n in parts if truth[n] == "OK"])
                row[combo] = (r["score_auroc"], r[RECALL])
            per_seq.append(row)
    print(f"{'models':<12} " + " ".join(f"{s.name:>14}" for s in sequences) + f" {'mean recall':>11}")
    for combo in combos:
        cells = " ".join(f"{row[combo][0]:>8.3f} {row[combo][1]:.2f}" for row in per_seq)
        print(f"{'+'.join(map(str, combo)):<12} {cells} {np.mean([row[combo][1] for row in per_seq]):>11.3f}")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", type=Path, nargs="+", required=True)
    p.add_argument("--data", type=Path, required=True)
    p.add_argument("--overlap", type=float, default=0.25)
    p.add_argument("--sequences", type=Path, nargs="*", default=[], help="recorded line sequences with truth.jsonl")
    p.add_argument("--config", type=Path, default=Path("configs/demo_line.yaml"), help="line config for --sequences")
    a = p.parse_args()
    detectors = [Detector(load_backend("onnxruntime", m), overlap=a.overlap) for m in a.models]
    samples = mvtec_test_set(a.data)
    masks, labels = [], np.array([s.defect_type != "good" for s in samples])
    seg: list[list[np.ndarray]] = [[] for _ in detectors]      # per model, per image
    novelty: list[list[np.ndarray]] = [[] for _ in detectors]
    img_score: list[list[float]] = [[] for _ in detectors]
    meta = detectors[0].meta
    geometry = {(d.meta.in_channels, d.meta.tile_size, d.meta.coarse_scale) for d in detectors}
    if len(geometry) > 1:
        raise SystemExit(f"the models tile differently (channels, tile, coarse scale): {sorted(geometry)}")
    for s in samples:  # each image read and tiled once, for every model
        img = read_image(s.image_path, meta.in_channels)
        masks.append(read_mask(s.mask_path, img.shape[:2]) if s.mask_path else np.zeros(img.shape[:2], bool))
        tiles, grid = scaled_tiles(img, meta.tile_size, a.overlap)
        coarse_tiles, coarse_grid = scaled_tiles(img, meta.tile_size, a.overlap, meta.coarse_scale)
        both = np.concatenate([tiles, coarse_tiles])
        zero = np.zeros(img.shape[:2], np.float32)
        for k, det in enumerate(detectors):
            maps, scores = det.infer_tiles(both, n_mapped=len(grid))
            fine, coarse = split_scores(scores, len(grid))
            seg[k].append(stitch(maps[:len(grid)], grid))
            novelty[k].append(det.meta.novelty_share().add(zero, grid, fine, coarse_grid=coarse_grid,
                                                           coarse_scores=coarse))
            img_score[k].append(image_score(seg[k][-1] + novelty[k][-1], fine, det.meta.map_score_weight, coarse))
    print(f"{len(samples)} images, overlap {a.overlap}; models: " + ", ".join(f"{k}={m}" for k, m in enumerate(a.models)))
    print(f"{'models':<12} {'image AUROC':>11} {'recall@5%':>9} {'pixel AUROC':>11} {'AUPRO':>6}")
    n = len(detectors)
    for size in range(1, n + 1):
        for combo in itertools.combinations(range(n), size):
            maps = [np.mean([seg[k][i] + novelty[k][i] for k in combo], axis=0) for i in range(len(samples))]
            scores = np.mean([img_score[k] for k in combo], axis=0)
            print(f"{'+'.join(map(str, combo)):<12} {metrics.roc_auc(labels, scores):>11.4f} "
                  f"{recall_at(labels, scores):>9.3f} {metrics.pixel_auroc(masks, maps):>11.4f} "
                  f"{metrics.aupro(masks, maps):>6.4f}")
    if a.sequences:
        line_table(a.models, a.sequences, a.config)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
