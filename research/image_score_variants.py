"""Study: how the tile scores of an exported model are best combined into one image score.

Runs the detector once over the development ``test/`` split and scores each image with several
combinations of its full-scale (fine) and half-scale (coarse) tile scores. Prints image AUROC, NG
recall at <= 5 % false alarms (the line target's metric) and AUROC per defect type. Its result:
research/README.md.

    python -m research.image_score_variants --model engines/models/magnetic_tile --data ../shared/datasets/magnetic_tile

``--model`` takes one or more model folders with a coarse memory. About 40 s per model on 2 CPU cores.

With ``--line SEQ ...`` (sequences written by ``simulate_line``, with ``truth.jsonl``) the same
variants are also scored on the simulated line: each OK / NG part preprocessed as the line does
(``--config``, default the demo line; ``Preprocessor.for_model``), its tiles run through the model,
and per sequence the line AUROC and NG recall at <= 5 % false alarms (``score_ranking``, as
``benchmark --pipeline`` reports them), then the NG parts the shipped score misses, by defect type.
About 6 s per 120-part sequence.
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Callable

import numpy as np

from engines import metrics
from engines.backends.base import load_backend
from engines.data import mvtec_test_set, read_image
from engines.detector import Detector
from pipeline.vision.scoring import score_part, split_scores
from pipeline.benchmark import false_alarm_bar, score_ranking

Combine = Callable[[np.ndarray, np.ndarray], float]
DETECTOR = "detector (the model's own score)"


def top_mean(scores: np.ndarray, k: int) -> float:
    return float(np.sort(scores)[::-1][:k].mean())


# Alternatives to the shipped score (the detector's own, reported first).
VARIANTS: dict[str, Combine] = {
    "mean of max fine, max coarse (k = 1)": lambda f, c: 0.5 * (f.max() + c.max()),
    "max fine": lambda f, c: float(f.max()),
    "max coarse": lambda f, c: float(c.max()),
    "max of both": lambda f, c: float(max(f.max(), c.max())),
    "mean of top-2 fine, max coarse": lambda f, c: 0.5 * (top_mean(f, 2) + c.max()),
    "0.4 max fine + 0.6 max coarse": lambda f, c: 0.4 * f.max() + 0.6 * c.max(),
    "0.6 max fine + 0.4 max coarse": lambda f, c: 0.6 * f.max() + 0.4 * c.max(),
    "0.25 max fine + 0.75 max coarse": lambda f, c: 0.25 * f.max() + 0.75 * c.max(),
}


def line_tile_scores(model: Path, config: Path, seq: Path) -> list[tuple[str, str, np.ndarray | None, np.ndarray | None,
                                                                      float | None]]:
    """(truth verdict, defect type, fine tile scores, coarse tile scores, the line's own score) per
    OK / NG part of ``seq``, scored as the line scores it (``decide`` with the model's rule, which
    may also read where the two scales agree); None where preprocessing finds no part (a miss)."""
    from engines.artifact import ModelMeta
    from engines.backends.base import map_coarse_tiles
    from pipeline.config import load_config
    from pipeline.processing import Preprocessor
    from pipeline.sim import sequence_parts

    meta = ModelMeta.load(model)
    cfg = load_config(config)
    prep = Preprocessor.for_model(cfg.preprocess, meta)
    backend = load_backend("onnxruntime", model)
    parts = []
    for t, frame in sequence_parts(seq):
        p = prep(frame)
        if p.verdict is not None:
            parts.append((t["verdict"], t["defect_type"], None, None, None))
            continue
        maps, scores = backend.infer(meta.normalise(p.tiles))
        maps = map_coarse_tiles(backend, p.tiles, maps, p.tile_index >= len(p.grid))
        own = score_part(p.part(maps, scores), meta.map_rule(), cfg.decision.part_erode_px).score
        fine, coarse = split_scores(scores, int((p.tile_index < len(p.grid)).sum()))
        parts.append((t["verdict"], t["defect_type"], fine, coarse, own))
    return parts


def line_report(model: Path, config: Path, seqs: list[Path]) -> None:
    per_seq = {seq: line_tile_scores(model, config, seq) for seq in seqs}
    print(f"\nsimulated line ({config}): line AUROC / NG recall at <= 5 % false alarms")
    print(f"{'image score':<40}" + "".join(f"{seq.name:>16}" for seq in seqs) + f"{'mean recall':>13}")
    for name in [DETECTOR, *VARIANTS]:
        cells, recalls = [], []
        for seq in seqs:
            scored = [(v, own if name == DETECTOR else None if f is None else VARIANTS[name](f, c))
                      for v, _, f, c, own in per_seq[seq]]
            r = score_ranking([s for v, s in scored if v == "NG"], [s for v, s in scored if v == "OK"])
            recalls.append(r["ng_recall_at_fa_0.05"])
            cells.append(f"{r['score_auroc']:.3f} / {r['ng_recall_at_fa_0.05']:.2f}")
        print(f"{name:<40}" + "".join(f"{c:>16}" for c in cells) + f"{np.mean(recalls):>13.3f}")
    missed, total = {}, {}
    for parts in per_seq.values():
        bar = false_alarm_bar([own for v, *_, own in parts if v == "OK"])
        for v, kind, *_, own in parts:
            if v == "NG":
                total[kind] = total.get(kind, 0) + 1
                missed[kind] = missed.get(kind, 0) + int(own is None or own <= bar)
    print("NG parts the detector's score misses at <= 5 % false alarms, all sequences: "
          + ", ".join(f"{k} {missed[k]} of {total[k]}" for k in sorted(total)))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", type=Path, nargs="+", required=True)
    p.add_argument("--data", type=Path, required=True)
    p.add_argument("--line", type=Path, nargs="*", default=[], metavar="SEQ", help="simulated line sequences")
    p.add_argument("--config", type=Path, default=Path("configs/demo_line.yaml"), help="line config for --line")
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
        rows = {DETECTOR: np.array([p.score for p in preds])}
        rows.update({name: np.array([combine(p.tile_scores, p.coarse_scores) for p in preds])
                     for name, combine in VARIANTS.items()})
        print(f"\n{model}  ({len(samples)} images, {labels.sum()} defective)")
        print(f"{'image score':<40} {'AUROC':>6}  {'rec@5%':>6}  " + " ".join(f"{t[:7]:>7}" for t in sorted(set(types) - {'good'})))
        for name, scores in rows.items():
            recall = score_ranking(list(scores[labels]), list(scores[~labels]))["ng_recall_at_fa_0.05"]
            per_type = [metrics.roc_auc(labels[(types == t) | ~labels], scores[(types == t) | ~labels])
                        for t in sorted(set(types) - {"good"})]
            print(f"{name:<40} {metrics.roc_auc(labels, scores):>6.4f} {recall:>6.3f}  " + " ".join(f"{v:>7.3f}" for v in per_type))
        if a.line:
            line_report(model, a.config, a.line)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
