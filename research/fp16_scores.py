"""Study: what fp16 inference does to the detector's scores and verdicts (torch backend, CUDA).

For every image of an MVTec-style ``test/`` split, the image score, the defect map and the verdicts
at the model's thresholds are computed three ways on the GPU: fp32 (the reference, TF32 off),
fp16 with the tile memories kept in fp32 (what the torch backend serves), and everything in fp16.
Prints the largest and mean score differences, map differences and how many verdicts and pixels
flip. Needs a CUDA device:

    python -m research.fp16_scores --model engines/models/magnetic_tile --data ../shared/datasets/magnetic_tile
"""
from __future__ import annotations

import argparse

import numpy as np

from engines.backends.base import load_backend
from engines.data import mvtec_test_set, read_image
from engines.detector import Detector


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True, nargs="+")
    p.add_argument("--data", required=True)
    p.add_argument("--device", default="cuda", help="cpu runs torch's fp16 kernels on the CPU: slow, a dry run")
    p.add_argument("--limit", type=int, default=0, help="every k-th image so that about N are used")
    args = p.parse_args()
    samples = mvtec_test_set(args.data)
    if args.limit:
        samples = samples[::max(1, len(samples) // args.limit)]
    for model in args.model:
        ref = Detector(load_backend("torch", model, device=args.device, fp16=False))
        served = Detector(load_backend("torch", model, device=args.device, fp16=True))
        all16_backend = load_backend("torch", model, device=args.device, fp16=True)
        all16_backend.module.half()  # memories too
        all16 = Detector(all16_backend)
        meta = ref.meta
        rows = {"fp16, fp32 memory": [], "all fp16": []}
        for s in samples:
            image = read_image(s.image_path, meta.in_channels)
            a = ref.predict(image)
            for name, det in (("fp16, fp32 memory", served), ("all fp16", all16)):
                b = det.predict(image)
                rows[name].append((abs(a.score - b.score), (a.score >= meta.image_threshold) != (b.score >= meta.image_threshold),
                                   float(np.abs(a.anomaly_map - b.anomaly_map).max()),
                                   int(((a.anomaly_map >= meta.pixel_threshold) != (b.anomaly_map >= meta.pixel_threshold)).sum()),
                                   a.anomaly_map.size))
        print(f"{model}: {len(samples)} images, thresholds image {meta.image_threshold} pixel {meta.pixel_threshold}; vs fp32")
        for name, r in rows.items():
            d = np.array(r, dtype=np.float64)
            print(f"  {name:<18} score diff max {d[:, 0].max():.2e} mean {d[:, 0].mean():.2e}; verdict flips {int(d[:, 1].sum())}; "
                  f"map diff max {d[:, 2].max():.2e}; pixels flipped {int(d[:, 3].sum())} of {int(d[:, 4].sum())}")


if __name__ == "__main__":
    main()
