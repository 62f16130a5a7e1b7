"""Study: how the segmentation map and the tile novelty scores are best fused into a pixel map.

Runs an exported model with tile memories once over the development ``test/`` split, takes apart
what the graph's map holds (``(1 - share) x segmentation + share x full-scale tile novelty``, share
from ``model.json: extra.memory_map_share``, 0 in exports that have ``fine_map_share``, which add the share
outside the graph), and scores several fusions of the segmentation map,
the full-scale novelty spread over its tiles and the half-scale novelty spread over its tiles (all
stitched with the same window, ``pipeline.vision.scoring.spread_scores``). The first is the detector's
map of models exported before ``fine_map_share`` existed: the graph's (share 0.01) plus ``coarse_map_share`` (0.01)
x the half-scale novelty, both spread as the mean over covering tiles (since then the detector
spreads them as the minimum; ``research/novelty_min_pool.py`` compares the two).
Prints pixel AUROC and AUPRO (FPR 0.3) for each. The index research/README.md gives its result.

    python -m research.map_fusion_variants --model engines/models/magnetic_tile --data ../shared/datasets/magnetic_tile

About 1.5 minutes on 2 CPU cores for magnetic tile.
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Callable

import numpy as np

from engines import metrics
from engines.backends.base import load_backend
from engines.data import mvtec_test_set, read_image, read_mask
from engines.detector import Detector
from pipeline.vision.scoring import split_scores
from pipeline.vision.tiling import scaled_tiles, stitch

# seg: segmentation map; fine / coarse: full- / half-scale tile novelty spread over the tiles.
from pipeline.vision.scoring import spread_scores
Fuse = Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]
VARIANTS: dict[str, Fuse] = {
    "0.99 seg + 0.01 fine + 0.01 coarse": lambda s, f, c: 0.99 * s + 0.01 * (f + c),
    "0.98 seg + 0.02 fine": lambda s, f, c: 0.98 * s + 0.02 * f,
    "seg alone": lambda s, f, c: s,
    "fine novelty alone": lambda s, f, c: f,
    "coarse novelty alone": lambda s, f, c: c,
    "fine + coarse novelty": lambda s, f, c: f + c,
    "seg x fine novelty": lambda s, f, c: s * f,
    "(seg + 0.01) x (fine + coarse)": lambda s, f, c: (s + 0.01) * (f + c),
    "0.98 seg + 0.01 (fine + coarse)": lambda s, f, c: 0.98 * s + 0.01 * (f + c),
}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", type=Path, required=True)
    p.add_argument("--data", type=Path, required=True)
    p.add_argument("--overlap", type=float, default=0.25)
    a = p.parse_args()
    detector = Detector(load_backend("onnxruntime", a.model), overlap=a.overlap)
    meta = detector.meta
    share = float(meta.extra.get("memory_map_share", 0.0))
    if meta.coarse_scale <= 0 or "memory_tiles" not in meta.extra:
        print(f"{a.model}: needs a model with both tile memories (model.json coarse_scale and extra.memory_tiles)")
        return 2
    t = meta.tile_size
    masks, fused = [], {name: [] for name in VARIANTS}
    for s in mvtec_test_set(a.data):
        img = read_image(s.image_path, meta.in_channels)
        shape = img.shape[:2]
        masks.append(read_mask(s.mask_path, shape) if s.mask_path else np.zeros(shape, bool))
        tiles, grid = scaled_tiles(img, t, a.overlap)
        coarse_tiles, coarse_grid = scaled_tiles(img, t, a.overlap, meta.coarse_scale)
        maps, scores = detector.infer_tiles(np.concatenate([tiles, coarse_tiles]))
        fine, coarse = split_scores(scores, len(grid))
        seg = stitch((maps[:len(grid)] - share * fine[:, None, None, None]) / (1.0 - share), grid)
        f = spread_scores(fine, np.arange(len(fine)), grid, shape)
        c = spread_scores(coarse, np.arange(len(coarse)), coarse_grid, shape)
        for name, fuse in VARIANTS.items():
            fused[name].append(fuse(seg, f, c).astype(np.float32))
    print(f"{a.model}: {len(masks)} images, overlap {a.overlap}")
    print(f"{'pixel map':<34} {'pixel AUROC':>11} {'AUPRO':>6}")
    for name, maps_ in fused.items():
        print(f"{name:<34} {metrics.pixel_auroc(masks, maps_):>11.3f} {metrics.aupro(masks, maps_):>6.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
