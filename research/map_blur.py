"""Study: the finished defect map smoothed with a Gaussian (``map_blur_sigma``), sigma by sigma.

One detector pass per model folder with its smoothing switched off (``map_blur_sigma`` 0, the rest of
the folder's rule as it is); each sigma then blurs those maps (smoothing is the last step of the map,
``pipeline.vision.scoring.blur_map``). Prints pixel AUROC / AUPRO (FPR 0.3) over the development split
and its even- and odd-numbered halves, and each defect type's AUPRO against the good images. The
image scores of a folder with tile memories do not read the map, so they do not change.

    python -m research.map_blur --model engines/models/magnetic_tile --data ../shared/datasets/magnetic_tile \
        --sigma 0 1 1.5 2 3 4 8

About 40 s per folder and 15 s per sigma on 2 CPU cores.
"""
from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path

import numpy as np

from engines import metrics
from engines.backends.base import load_backend
from engines.data import mvtec_test_set, read_image, read_mask
from engines.detector import Detector
from pipeline.vision.scoring import blur_map


def unsmoothed_maps(model: str, data: Path) -> tuple[list[np.ndarray], list[np.ndarray], list[str]]:
    det = Detector(load_backend("onnxruntime", model))
    det.meta = replace(det.meta, map_blur_sigma=0.0)
    maps, masks, types = [], [], []
    for s in mvtec_test_set(data):
        image = read_image(s.image_path, det.meta.in_channels)
        maps.append(det.predict(image).anomaly_map.astype(np.float32))
        masks.append(read_mask(s.mask_path, image.shape[:2]) if s.mask_path else np.zeros(image.shape[:2], bool))
        types.append(s.defect_type)
    return maps, masks, types


def report(maps: list[np.ndarray], masks: list[np.ndarray], types: list[str], sigma: float) -> str:
    smooth = [blur_map(m, sigma) for m in maps]
    n = len(maps)
    cells = []
    for idx in (range(n), range(0, n, 2), range(1, n, 2)):
        a, b = [masks[i] for i in idx], [smooth[i] for i in idx]
        cells.append(f"{metrics.pixel_auroc(a, b):.4f} / {metrics.aupro(a, b):.4f}")
    per_type = []
    for t in sorted(set(types) - {"good"}):
        idx = [i for i in range(n) if types[i] in (t, "good")]
        per_type.append(f"{t} {metrics.aupro([masks[i] for i in idx], [smooth[i] for i in idx]):.3f}")
    return f"sigma {sigma:<4g} " + "   ".join(cells) + "   AUPRO " + ", ".join(per_type)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", nargs="+", required=True, help="model folders")
    p.add_argument("--data", type=Path, required=True, help="MVTec-style folder with test/ and ground_truth/")
    p.add_argument("--sigma", type=float, nargs="+", default=[0, 1, 2, 4], help="sigmas in px (0: unsmoothed)")
    args = p.parse_args()
    for model in args.model:
        maps, masks, types = unsmoothed_maps(model, args.data)
        print(f"{model}: pixel AUROC / AUPRO, all / even / odd images", flush=True)
        for sigma in args.sigma:
            print("  " + report(maps, masks, types, sigma), flush=True)


if __name__ == "__main__":
    main()
