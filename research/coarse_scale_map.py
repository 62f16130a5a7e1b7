"""Study: does a defect map made at half scale, where one 128 px tile sees 256 px of the part, help
outline the wide, faint uneven bands that hold the pixel-AUROC gap (pixel_auroc_breakdown.py)?

The fine map is ``--fine``'s, as ``evaluate`` makes it, without its coarse-map network if it has
one (the shipped folder has one). The coarse map is ``--coarse`` run on each
image downscaled by 0.5 (``pipeline.vision.tiling.downscale``), its map upsampled back. Prints
pixel AUROC / AUPRO (as ``evaluate``: 2,000-bin histograms, FPR 0.3) of each map and of simple
blends, over the whole development split and over its uneven and good images.

    python -m research.coarse_scale_map --fine engines/models/magnetic_tile --coarse MODEL_HALF --data ../shared/datasets/magnetic_tile

``MODEL_HALF``: weights trained on the training images downscaled by 0.5 (``train --image-scale 0.5``,
or copies resized by 0.5), e.g. the shipped weights fine-tuned at that scale
(``train --data HALF_IMAGES --init engines/models/magnetic_tile
--batch-size 64 --epochs 2 --lr 5e-4 --ema 0.999``). Passing the shipped model as ``--coarse``
is the control: the same network on images at a scale it was not trained at. ``--bare`` leaves out
the coarse model's own tile-novelty shares, so its map is the network's alone, as a coarse-map
network is built into a model (``export_model --coarse-map``); the shipped model's own
``coarse_map/`` folder, which has no memories, gives the same without it. Several ``--coarse``
folders: their maps are averaged (an ensemble). ``--scale`` runs them on another image scale (such
as 0.25, for a network trained with ``train --image-scale 0.25``), and ``--keep-fine-coarse-map``
leaves ``--fine``'s own coarse-map network in the fine map, to test a further map on top of the
shipped one. About 2 minutes per coarse model on 2 CPU cores.
"""
from __future__ import annotations

import argparse
from dataclasses import replace

import cv2
import numpy as np

from engines import metrics
from engines.backends.base import load_backend
from engines.data import mvtec_test_set, read_image, read_mask
from engines.detector import Detector
from pipeline.vision.tiling import downscale


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--fine", required=True, help="model folder for the full-scale map")
    ap.add_argument("--coarse", required=True, nargs="+",
                    help="model folder run on the downscaled images; several: their maps are averaged")
    ap.add_argument("--scale", type=float, default=0.5, help="the coarse models' image scale (0.5: half size)")
    ap.add_argument("--keep-fine-coarse-map", action="store_true",
                    help="leave --fine's own coarse-map network in its map (to test a further map on top of it)")
    ap.add_argument("--data", required=True)
    ap.add_argument("--overlap", type=float, default=0.25)
    ap.add_argument("--bare", action="store_true", help="the coarse model's network map alone, without its novelty shares")
    ap.add_argument("--weights", default="0.25", help="comma-separated weights w of the 'fine + w coarse' rows")
    ap.add_argument("--halves", action="store_true",
                    help="also print the even- and odd-numbered halves of the split (a gain that holds on both)")
    args = ap.parse_args()
    fine_det = Detector(load_backend("onnxruntime", args.fine), overlap=args.overlap)
    if not args.keep_fine_coarse_map:
        fine_det.meta = replace(fine_det.meta, coarse_map_weight=0.0)
    coarse_dets = [Detector(load_backend("onnxruntime", c), overlap=args.overlap) for c in args.coarse]
    if args.bare:
        for d in coarse_dets:
            d.meta = replace(d.meta, fine_map_share=0.0, coarse_map_share=0.0)
    masks, fine, coarse, types = [], [], [], []
    for s in mvtec_test_set(args.data):
        img = read_image(s.image_path, fine_det.meta.in_channels)
        h, w = img.shape[:2]
        masks.append(read_mask(s.mask_path, (h, w)) if s.mask_path else np.zeros((h, w), bool))
        fine.append(fine_det.predict(img).anomaly_map.astype(np.float32))
        small = downscale(img, args.scale)
        small = np.mean([d.predict(small).anomaly_map.astype(np.float32) for d in coarse_dets], axis=0)
        coarse.append(cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR))
        types.append(s.defect_type)
    blends = {"fine": fine, "coarse": coarse,
              "max": [np.maximum(f, c) for f, c in zip(fine, coarse)],
              "mean": [(f + c) / 2 for f, c in zip(fine, coarse)]}
    for w in (float(x) for x in args.weights.split(",")):
        blends[f"fine + {w:g} coarse"] = [f + w * c for f, c in zip(fine, coarse)]
    subsets = {"all": range(len(types)), "uneven": [i for i, t in enumerate(types) if t in ("good", "uneven")]}
    if args.halves:
        subsets.update(even=range(0, len(types), 2), odd=range(1, len(types), 2))
    print(f"{'map':<20} " + " ".join(f"{name + ': pixel AUROC / AUPRO':>30}" for name in subsets))
    for name, maps in blends.items():
        cells = []
        for idx in subsets.values():
            m, a = [masks[i] for i in idx], [maps[i] for i in idx]
            cells.append(f"{metrics.pixel_auroc(m, a):>22.3f} / {metrics.aupro(m, a):.3f}")
        print(f"{name:<20} " + " ".join(cells))


if __name__ == "__main__":
    main()
