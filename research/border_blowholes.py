"""Study: how the blowholes that a model misses lie against the image border.

Scores the development ``test/`` split with the detector and, with ``--line SEQ ...``, the OK / NG
parts of simulated line sequences as the line scores them (``decide`` with the model's rule, as
``research/image_score_variants.py`` does). Each blowhole image is put in a band by the
distance of its ground-truth mask to the nearest image border (a line part by that of the image it
was made from, ``truth.jsonl: source_image``), and per band it prints how many blowholes there are,
how many score at or below the bar that flags at most 5 % of the OK parts (``false_alarm_bar``:
the image set's for the split, each sequence's own for the line), and, for the split, the median
peak of the network's own map (the stitched full-scale map before the tile novelty is added,
smoothed as the model smooths its map) over the blowhole's mask.

    python -m research.border_blowholes --model engines/models/magnetic_tile --data ../shared/datasets/magnetic_tile \\
        --line SEQ [SEQ ...]

About 40 s for the split and 9 s per 120-part sequence on 2 CPU cores.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from engines.backends.base import load_backend, map_coarse_tiles
from engines.data import mvtec_test_set, read_image, read_mask
from engines.detector import Detector
from pipeline.benchmark import false_alarm_bar
from pipeline.vision.tiling import scaled_tiles, stitch
from pipeline.vision.scoring import blur_map, score_part

BANDS = ((0, 4), (5, 15), (16, 10_000))  # px from the mask to the nearest image border


def band(distance: int) -> str:
    for lo, hi in BANDS:
        if lo <= distance <= hi:
            return f"{lo}-{hi} px" if hi < 10_000 else f">= {lo} px"
    raise ValueError(distance)


def border_distance(mask: np.ndarray) -> int:
    ys, xs = np.nonzero(mask)
    h, w = mask.shape
    return int(min(xs.min(), ys.min(), w - 1 - xs.max(), h - 1 - ys.max()))


def network_peak(detector: Detector, image: np.ndarray, mask: np.ndarray) -> float:
    """The network's own full-scale map (no novelty, no coarse map), smoothed as the model smooths
    its finished map, at its highest over ``mask``."""
    tiles, grid = scaled_tiles(image, detector.meta.tile_size, detector.overlap)
    maps, _ = detector.infer_tiles(tiles)
    return float(blur_map(stitch(maps, grid), detector.meta.map_blur_sigma)[mask].max())


def split_report(model: Path, data: Path) -> dict[str, int]:
    detector = Detector(load_backend("onnxruntime", model))
    samples = mvtec_test_set(data)
    scores, holes = [], []
    for s in samples:
        image = read_image(s.image_path, detector.meta.in_channels)
        score = detector.predict(image).score
        scores.append((s.defect_type, score))
        if s.defect_type == "blowhole":
            mask = read_mask(s.mask_path, image.shape[:2])
            holes.append((Path(s.image_path).name, border_distance(mask), score, network_peak(detector, image, mask)))
    bar = false_alarm_bar([v for t, v in scores if t == "good"])
    print(f"{model}: development split, {len(holes)} blowholes; bar at <= 5 % false alarms {bar:.4f}")
    print(f"{'distance to border':<20} {'blowholes':>9} {'missed':>7} {'median map peak':>16}")
    for lo, hi in BANDS:
        rows = [h for h in holes if lo <= h[1] <= hi]
        print(f"{band(lo):<20} {len(rows):>9} {sum(h[2] <= bar for h in rows):>7} "
              f"{np.median([h[3] for h in rows]) if rows else float('nan'):>16.3f}")
    return {name: d for name, d, _, _ in holes}


def line_part_scores(backend, meta, cfg, prep, seq: Path) -> list[tuple[dict, float | None]]:
    """Each part of a simulated sequence: its truth row and the score the line gives it (``prep``,
    the line's preprocessing, then ``score_part`` with the model's rule; None where no part is found)."""
    from pipeline.sim import sequence_parts

    parts = []
    for t, frame in sequence_parts(seq):
        p = prep(frame)
        score = None
        if p.verdict is None:
            maps, scores = backend.infer(meta.normalise(p.tiles))
            maps = map_coarse_tiles(backend, p.tiles, maps, p.tile_index >= len(p.grid))
            score = score_part(p.part(maps, scores), meta.map_rule(), cfg.decision.part_erode_px).score
        parts.append((t, score))
    return parts


def line_report(model: Path, config: Path, seqs: list[Path], distance: dict[str, int]) -> None:
    from engines.artifact import ModelMeta
    from pipeline.config import load_config
    from pipeline.processing import Preprocessor

    meta = ModelMeta.load(model)
    cfg = load_config(config)
    prep = Preprocessor.for_model(cfg.preprocess, meta)
    backend = load_backend("onnxruntime", model)
    missed: dict[str, int] = {}
    total: dict[str, int] = {}
    for seq in seqs:
        parts = line_part_scores(backend, meta, cfg, prep, seq)
        bar = false_alarm_bar([s for t, s in parts if t["verdict"] == "OK"])
        for t, score in parts:
            if t["defect_type"] != "blowhole":
                continue
            if t.get("source_image") not in distance:
                raise SystemExit(f"{seq}/truth.jsonl: {t['file']} names source_image {t.get('source_image')!r}, "
                                 "not a blowhole of --data's test split; make the sequence from that split")
            b = band(distance[t["source_image"]])
            total[b] = total.get(b, 0) + 1
            missed[b] = missed.get(b, 0) + int(score is None or score <= bar)
    print(f"\nsimulated line ({config}), {len(seqs)} sequences: blowhole parts missed at <= 5 % false alarms "
          "(each sequence's own bar), by the source image's distance to its border")
    for lo, _ in BANDS:
        b = band(lo)
        print(f"{b:<20} {missed.get(b, 0):>4} of {total.get(b, 0)}")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", type=Path, required=True)
    p.add_argument("--data", type=Path, required=True)
    p.add_argument("--line", type=Path, nargs="*", default=[], metavar="SEQ", help="simulated line sequences")
    p.add_argument("--config", type=Path, default=Path("configs/demo_line.yaml"), help="line config for --line")
    a = p.parse_args()
    distance = split_report(a.model, a.data)
    if a.line:
        line_report(a.model, a.config, a.line, distance)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
