"""Study: the tile-novelty shares of the defect map (``fine_map_share``, ``coarse_map_share``; both
0.01 in models exported before ``both_scales_map_share``) swept again with the coarse-map network in the map.

The map is linear in the two shares, so three detector passes (shares 0/0, 1/0, 0/1) give every
blend; a fourth, at the model's own shares, checks that. Prints pixel AUROC / AUPRO (FPR 0.3) over
the whole development split and its even- and odd-numbered halves, for shares 0 to 0.04.

    python -m research.map_share_sweep --model engines/models/magnetic_tile --data ../shared/datasets/magnetic_tile

About 5 minutes on 2 CPU cores.
"""
from __future__ import annotations

import argparse
from dataclasses import replace

import numpy as np

from engines import metrics
from engines.backends.base import load_backend
from engines.data import mvtec_test_set, read_image, read_mask
from engines.detector import Detector

SHARES = (0.0, 0.005, 0.01, 0.02, 0.04)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--data", required=True)
    args = ap.parse_args()
    det = Detector(load_backend("onnxruntime", args.model))
    own = det.meta
    samples = mvtec_test_set(args.data)
    images = [read_image(s.image_path, own.in_channels) for s in samples]
    masks = [read_mask(s.mask_path, im.shape[:2]) if s.mask_path else np.zeros(im.shape[:2], bool)
             for s, im in zip(samples, images)]

    def maps(fine: float, coarse: float) -> list[np.ndarray]:
        # The lower-spread share (both_scales_map_share) is held at 0: this sweep is of the older rule.
        det.meta = replace(own, fine_map_share=fine, coarse_map_share=coarse, both_scales_map_share=0.0)
        return [det.predict(im).anomaly_map.astype(np.float32) for im in images]

    bare = maps(0.0, 0.0)
    fine = [a - b for a, b in zip(maps(1.0, 0.0), bare)]
    coarse = [a - b for a, b in zip(maps(0.0, 1.0), bare)]
    check = maps(own.fine_map_share, own.coarse_map_share)
    print("linearity check, max abs diff at the model's own shares:",
          max(float(np.abs(b + own.fine_map_share * f + own.coarse_map_share * c - m).max())
              for b, f, c, m in zip(bare, fine, coarse, check)))
    subsets = {"all": range(len(images)), "even": range(0, len(images), 2), "odd": range(1, len(images), 2)}
    print(f"{'fine / coarse share':<20}" + "".join(f"{k + ': px AUROC / AUPRO':>28}" for k in subsets))
    for sf in SHARES:
        for sc in SHARES:
            blend = [b + sf * f + sc * c for b, f, c in zip(bare, fine, coarse)]
            cells = [f"{metrics.pixel_auroc([masks[i] for i in idx], [blend[i] for i in idx]):>20.3f} / "
                     f"{metrics.aupro([masks[i] for i in idx], [blend[i] for i in idx]):.3f}" for idx in subsets.values()]
            print(f"{sf:<8g} / {sc:<9g}" + "".join(cells), flush=True)


if __name__ == "__main__":
    main()
