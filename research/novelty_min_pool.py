"""Study: does spreading each tile's novelty as the minimum over the tiles covering a pixel localise?

Models exported before ``novelty_spread`` existed spread a tile's novelty over all of the tile
(window-weighted mean of the covering tiles), so a defect anywhere in a tile lifts all of its pixels; in the pooled pixel AUROC the
defect-free pixels of defective images then outrank the pixels of large, faint defects ("uneven",
most of the defect pixels). Taking instead, for each pixel, the *minimum* novelty over the tiles
that cover it marks a pixel only when every tile that contains it is novel: every tile over a
defect pixel contains the defect, while a defect-free pixel usually has some covering tile that
misses the defect. The finer the tile stride, the tighter that outline (a morphological opening of
the tile-score field).

Runs the exported model on the development ``test/`` split once per overlap (both scales in one
batch, as the detector does); the pass at the detector's overlap also gives the segmentation map,
the model's own map as the detector makes it ("shipped map") and the image score. It prints pixel
AUROC, AUPRO (FPR 0.3) and image AUROC of the maximum of each map, on all images and on the even-
and odd-numbered halves (so that a choice made on one half can be read on the other).

    python -m research.novelty_min_pool --model engines/models/magnetic_tile --data ../shared/datasets/magnetic_tile

About 4 minutes on 2 CPU cores with the default overlaps (1.5 with ``--overlaps 0.25``). The
figures in research/results/novelty_min_pool.txt were made on model folders exported before the
change, whose "shipped map" is the mean spread.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

from engines import metrics
from engines.backends.base import load_backend
from engines.data import mvtec_test_set, read_image, read_mask
from engines.detector import Detector
from pipeline.vision.scoring import split_scores
from pipeline.vision.tiling import scaled_tiles, stitch
from pipeline.vision.scoring import image_score, spread_scores


def one_pass(detector: Detector, img: np.ndarray, overlap: float) -> dict:
    """Both scales tiled at ``overlap`` and run in one batch, as ``Detector.predict`` does: the
    full-scale maps, both scales' scores and their grids."""
    meta = detector.meta
    tiles, grid = scaled_tiles(img, meta.tile_size, overlap)
    coarse_tiles, cgrid = scaled_tiles(img, meta.tile_size, overlap, meta.coarse_scale)
    maps, scores = detector.infer_tiles(np.concatenate([tiles, coarse_tiles]))
    fine, coarse = split_scores(scores, len(grid))
    return {"maps": maps[:len(grid)], "fine": fine, "coarse": coarse, "grid": grid, "cgrid": cgrid}


def novelty_fields(p: dict, shape: tuple[int, int]) -> dict[str, np.ndarray]:
    fi, ci = np.arange(len(p["fine"])), np.arange(len(p["coarse"]))
    return {"fmin": spread_scores(p["fine"], fi, p["grid"], shape, "min"),
            "cmin": spread_scores(p["coarse"], ci, p["cgrid"], shape, "min"),
            "fmean": spread_scores(p["fine"], fi, p["grid"], shape),
            "cmean": spread_scores(p["coarse"], ci, p["cgrid"], shape)}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", type=Path, required=True)
    p.add_argument("--data", type=Path, required=True)
    p.add_argument("--overlaps", type=float, nargs="+", default=[0.25, 0.5, 0.75])
    p.add_argument("--shares", type=float, nargs="+", default=[0.01, 0.02, 0.05])
    a = p.parse_args()
    detector = Detector(load_backend("onnxruntime", a.model))
    meta = detector.meta
    share = float(meta.extra.get("memory_map_share", 0.0))  # in-graph share; 0 in current exports
    if meta.coarse_scale <= 0 or "memory_tiles" not in meta.extra:
        print(f"{a.model}: needs a model with both tile memories")
        return 2
    samples = list(mvtec_test_set(a.data))
    masks, labels, seg, shipped, shipped_score = [], [], [], [], []
    fields: dict[tuple[float, str], list[np.ndarray]] = {}
    start = time.time()
    for s in tqdm(samples, desc="images"):
        img = read_image(s.image_path, meta.in_channels)
        shape = img.shape[:2]
        masks.append(read_mask(s.mask_path, shape) if s.mask_path else np.zeros(shape, bool))
        labels.append(s.defect_type != "good")
        passes = {ov: one_pass(detector, img, ov) for ov in {detector.overlap, *a.overlaps}}
        base = passes[detector.overlap]  # the detector's own map and score, from the same pass
        graph_map = stitch(base["maps"], base["grid"])
        anomaly = meta.novelty_share().add(graph_map, base["grid"], base["fine"], coarse_grid=base["cgrid"],
                                           coarse_scores=base["coarse"])
        shipped.append(anomaly)
        shipped_score.append(image_score(anomaly, base["fine"], meta.map_score_weight, base["coarse"]))
        seg.append(stitch((base["maps"] - share * base["fine"][:, None, None, None]) / (1.0 - share), base["grid"]))
        for ov in a.overlaps:
            for k, v in novelty_fields(passes[ov], shape).items():
                fields.setdefault((ov, k), []).append(v)
    print(f"{a.model}: {len(samples)} images, {time.time() - start:.0f} s")
    variants: dict[str, list[np.ndarray]] = {"shipped map": shipped}
    for ov in a.overlaps:
        f, c = fields[(ov, "fmin")], fields[(ov, "cmin")]
        fm, cm = fields[(ov, "fmean")], fields[(ov, "cmean")]
        variants[f"ov {ov}: fine min alone"] = f
        variants[f"ov {ov}: coarse min alone"] = c
        variants[f"ov {ov}: fine + coarse min"] = [x + y for x, y in zip(f, c)]
        variants[f"ov {ov}: fine + coarse mean"] = [x + y for x, y in zip(fm, cm)]
        variants[f"ov {ov}: 0.98 seg + 0.01 (fine min + coarse mean)"] = [
            0.98 * g + 0.01 * (x + y) for g, x, y in zip(seg, f, cm)]
        variants[f"ov {ov}: 0.98 seg + 0.01 (fine mean + coarse min)"] = [
            0.98 * g + 0.01 * (x + y) for g, x, y in zip(seg, fm, c)]
        for sh in a.shares:
            variants[f"ov {ov}: {1 - 2 * sh:.2f} seg + {sh} (fine + coarse min)"] = [
                (1 - 2 * sh) * g + sh * (x + y) for g, x, y in zip(seg, f, c)]
    halves = {"all": range(len(samples)), "even": range(0, len(samples), 2), "odd": range(1, len(samples), 2)}
    print(f"image AUROC of the shipped score: {metrics.roc_auc(np.array(labels), np.array(shipped_score)):.3f}")
    head = "".join(f"{h + ' pix/PRO/img':>24}" for h in halves)
    print(f"{'pixel map':<46}{head}")
    for name, ms in variants.items():
        row = ""
        for idx in halves.values():
            mk = [masks[i] for i in idx]
            mp = [ms[i] for i in idx]
            img_auc = metrics.roc_auc(np.array([labels[i] for i in idx]), np.array([float(m.max()) for m in mp]))
            row += f"{metrics.pixel_auroc(mk, mp):>10.3f}{metrics.aupro(mk, mp):>7.3f}{img_auc:>7.3f}"
        print(f"{name:<46}{row}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
