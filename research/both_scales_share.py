"""Study: the map's novelty as the lower of the two scales' spreads (``both_scales_map_share``)
against each scale's spread added on its own (``fine_map_share`` / ``coarse_map_share``, 0.01 each
in models exported before ``both_scales_map_share``).

The map is linear in the three shares given the two spread maps, so three detector passes (all
shares 0; fine share 1; coarse share 1) give both spreads exactly and every blend is computed from
them. Prints pixel AUROC / AUPRO (FPR 0.3) over the whole development split and its even- and
odd-numbered halves for the older rule and for shares of the lower spread from 0.01 to 0.04 (alone,
and with 0.01 of the fine spread on top). The segmentation part of the map (the network's own map
and, where the folder has one, its coarse-map network's) is as the folder says.

    python -m research.both_scales_share --model engines/models/magnetic_tile --data ../shared/datasets/magnetic_tile

About 4 minutes per folder on 2 CPU cores.
"""
from __future__ import annotations

import argparse
from dataclasses import replace

import numpy as np

from engines import metrics
from engines.backends.base import load_backend
from engines.data import mvtec_test_set, read_image, read_mask
from engines.detector import Detector

BLENDS = {  # name -> (fine share, coarse share, share of the lower spread)
    "each spread 0.01 / 0.01 (older rule)": (0.01, 0.01, 0.0),
    "lower spread 0.01": (0.0, 0.0, 0.01),
    "lower spread 0.02": (0.0, 0.0, 0.02),
    "lower spread 0.03 (new default)": (0.0, 0.0, 0.03),
    "lower spread 0.04": (0.0, 0.0, 0.04),
    "fine 0.01 + lower spread 0.03": (0.01, 0.0, 0.03),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True, nargs="+", help="model folders (each with a coarse memory)")
    ap.add_argument("--data", required=True)
    args = ap.parse_args()
    samples = mvtec_test_set(args.data)
    for model in args.model:
        det = Detector(load_backend("onnxruntime", model))
        own = det.meta
        if own.coarse_scale <= 0:
            raise SystemExit(f"{model}: no coarse memory, so no second scale to agree with")
        images = [read_image(s.image_path, own.in_channels) for s in samples]
        masks = [read_mask(s.mask_path, im.shape[:2]) if s.mask_path else np.zeros(im.shape[:2], bool)
                 for s, im in zip(samples, images)]

        def maps(fine: float, coarse: float, both: float = 0.0) -> list[np.ndarray]:
            det.meta = replace(own, fine_map_share=fine, coarse_map_share=coarse, both_scales_map_share=both)
            return [det.predict(im).anomaly_map.astype(np.float32) for im in images]

        bare = maps(0.0, 0.0)
        f = [a - b for a, b in zip(maps(1.0, 0.0), bare)]
        c = [a - b for a, b in zip(maps(0.0, 1.0), bare)]
        check = maps(0.0, 0.0, 0.03)  # the detector's own blend against the one computed here
        print(f"\n{model}: max abs diff, detector's lower-spread blend vs computed:",
              max(float(np.abs(b + 0.03 * np.minimum(fi, ci) - m).max()) for b, fi, ci, m in zip(bare, f, c, check)))
        subsets = {"all": range(len(images)), "even": range(0, len(images), 2), "odd": range(1, len(images), 2)}
        print(f"{'map novelty':<40}" + "".join(f"{k + ': px AUROC / AUPRO':>28}" for k in subsets))
        for name, (sf, sc, sb) in BLENDS.items():
            blend = [b + sf * fi + sc * ci + sb * np.minimum(fi, ci) for b, fi, ci in zip(bare, f, c)]
            cells = [f"{metrics.pixel_auroc([masks[i] for i in idx], [blend[i] for i in idx]):>20.3f} / "
                     f"{metrics.aupro([masks[i] for i in idx], [blend[i] for i in idx]):.3f}" for idx in subsets.values()]
            print(f"{name:<40}" + "".join(cells), flush=True)


if __name__ == "__main__":
    main()
