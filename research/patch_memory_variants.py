"""Study: does a patch-level memory of the Tiny-UNet's own features outline real defects?

The tile memory scores a whole 128x128 tile, so the pixel map can only say which tiles are novel.
This study stores the network's intermediate encoder features per position instead (PatchCore's
idea, with the model's own features: no pretrained weights), scores each test position by the
distance to its nearest stored OK position, and turns the per-tile distance grids into a pixel map
(bilinear upsampling, stitched with the detector's window). Feature sets:

- ``x3p``: the third encoder stage (4 * width channels, stride 4 px), 3x3 average-pooled;
- ``x4``: the fourth stage (8 * width channels, stride 8 px); ``x4p``: the same, 3x3 average-pooled;
- ``x34``: ``x3`` 2x2-pooled concatenated with ``x4`` (stride 8 px).

Each is z-normalised with OK statistics; the bank is a random 40,000 of 24 positions per OK
training tile. Prints pixel AUROC, AUPRO (FPR 0.3) and image AUROC (map maximum) per feature set,
then the shipped map plus a share of the patch distance (scaled between the median and the 99.9th
percentile of distances on the OK test images, a study-only normalisation).

    python -m research.patch_memory_variants --model engines/models/magnetic_tile --data ../shared/datasets/magnetic_tile

About 20 minutes on 2 CPU cores (the 40,000-row nearest-neighbour searches dominate).
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from engines import metrics
from engines.artifact import ModelMeta
from engines.backends.base import load_backend
from engines.data import mvtec_test_set, read_image, read_mask, training_images
from engines.detector import Detector
from engines.inference_model import build_model, load_weights
from pipeline.vision.tiling import extract_tiles, stitch, tile_grid

BANK_ROWS = 40_000
PER_TILE = 24
SHARES = (0.01, 0.03, 0.1)


def features(net, meta: ModelMeta, tiles_u8: np.ndarray) -> dict[str, torch.Tensor]:
    x = torch.from_numpy(meta.normalise(tiles_u8))
    with torch.inference_mode():
        _, _, x3, x4, _ = net._encode(x)
    return {"x3p": F.avg_pool2d(x3, 3, 1, 1), "x4": x4, "x4p": F.avg_pool2d(x4, 3, 1, 1),
            "x34": torch.cat([F.avg_pool2d(x3, 2), x4], 1)}


def positions(v: torch.Tensor) -> torch.Tensor:
    """``(N, C, H, W)`` feature maps -> one ``C``-vector per position, ``(N * H * W, C)``."""
    return v.permute(0, 2, 3, 1).reshape(-1, v.shape[1])


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", type=Path, required=True)
    p.add_argument("--data", type=Path, required=True)
    p.add_argument("--overlap", type=float, default=0.25)
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    meta = ModelMeta.load(a.model)
    state = torch.load(a.model / "model.pt", weights_only=True)
    net = load_weights(build_model(meta.arch, meta.in_channels, meta.width), state, str(a.model)).eval()
    t = meta.tile_size
    rng = np.random.default_rng(0)

    sampled: dict[str, list[np.ndarray]] = {}
    for path in tqdm(training_images(a.data), desc="OK training positions"):
        img = read_image(path, meta.in_channels)
        grid = tile_grid(*img.shape[:2], t, a.overlap)
        for name, v in features(net, meta, extract_tiles(img, grid)).items():
            rows = positions(v).numpy()
            sampled.setdefault(name, []).append(rows[rng.choice(len(rows), min(len(rows), PER_TILE * len(grid)), replace=False)])
    banks, stats = {}, {}
    for name, parts in sampled.items():
        rows = np.concatenate(parts)
        mean, std = rows.mean(0), rows.std(0) + 1e-6
        rows = rows[rng.choice(len(rows), min(BANK_ROWS, len(rows)), replace=False)]
        stats[name] = (torch.from_numpy(mean), torch.from_numpy(std))
        banks[name] = torch.from_numpy(((rows - mean) / std).astype(np.float32))

    detector = Detector(load_backend("onnxruntime", a.model), overlap=a.overlap)
    masks, labels, shipped = [], [], []
    maps: dict[str, list[np.ndarray]] = {name: [] for name in banks}
    for s in tqdm(mvtec_test_set(a.data), desc="test images"):
        img = read_image(s.image_path, meta.in_channels)
        shape = img.shape[:2]
        masks.append(read_mask(s.mask_path, shape) if s.mask_path else np.zeros(shape, bool))
        labels.append(s.defect_type != "good")
        shipped.append(detector.predict(img).anomaly_map)
        grid = tile_grid(*shape, t, a.overlap)
        for name, v in features(net, meta, extract_tiles(img, grid)).items():
            n, _, h, w = v.shape
            mean, std = stats[name]
            query = (positions(v) - mean) / std
            dist = torch.cdist(query, banks[name]).min(1).values.reshape(n, 1, h, w)
            up = F.interpolate(dist, size=(t, t), mode="bilinear", align_corners=False)[:, 0].numpy()
            maps[name].append(stitch(np.ascontiguousarray(up), grid).astype(np.float32))
    labels_ = np.array(labels)
    print(f"{a.model}: {len(masks)} images; bank {BANK_ROWS} positions per feature set")
    print(f"{'pixel map':<26} {'pixel AUROC':>11} {'AUPRO':>6} {'image AUROC':>11}")
    print(f"{'shipped':<26} {metrics.pixel_auroc(masks, shipped):>11.3f} {metrics.aupro(masks, shipped):>6.3f}")
    for name, ms in maps.items():
        image = metrics.roc_auc(labels_, np.array([m.max() for m in ms]))
        print(f"{name + ' patch distance':<26} {metrics.pixel_auroc(masks, ms):>11.3f} {metrics.aupro(masks, ms):>6.3f} {image:>11.3f}")
    for name in ("x4p", "x34"):
        ok = np.concatenate([m.ravel() for m, bad in zip(maps[name], labels) if not bad])
        lo, hi = np.percentile(ok, 50), np.percentile(ok, 99.9)
        for share in SHARES:
            fused = [s + share * np.clip((m - lo) / (hi - lo), 0, None) for s, m in zip(shipped, maps[name])]
            label = f"shipped + {share} {name}"
            print(f"{label:<26} {metrics.pixel_auroc(masks, fused):>11.3f} {metrics.aupro(masks, fused):>6.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
