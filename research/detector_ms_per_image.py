"""Study: milliseconds per image of the whole detector (tiling, both networks, stitching, score) on
a development split, one model per process, so that no other model's threads share the cores.

    python -m research.detector_ms_per_image --model engines/models/magnetic_tile --data ../shared/datasets/magnetic_tile

Prints the images timed, their full- and half-scale tiles, and the mean ms per image and per tile.
Run it once per model, alternating, to compare two folders.
"""
from __future__ import annotations

import argparse
import time

from engines.backends.base import load_backend
from engines.data import mvtec_test_set, read_image
from engines.detector import Detector


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--data", required=True)
    ap.add_argument("--every", type=int, default=3, help="time every Nth image of the split")
    args = ap.parse_args()
    detector = Detector(load_backend("onnxruntime", args.model), overlap=0.25)
    images = [read_image(s.image_path, detector.meta.in_channels) for s in mvtec_test_set(args.data)][::args.every]
    detector.predict(images[0])  # warm-up
    seconds, fine, coarse = 0.0, 0, 0
    for img in images:
        t0 = time.perf_counter()
        p = detector.predict(img)
        seconds += time.perf_counter() - t0
        fine += len(p.tile_scores)
        coarse += 0 if p.coarse_scores is None else len(p.coarse_scores)
    print(f"{args.model}: {len(images)} images, {fine} full-scale + {coarse} half-scale tiles: "
          f"{1000 * seconds / len(images):.1f} ms per image, {1000 * seconds / (fine + coarse):.2f} ms per tile")


if __name__ == "__main__":
    main()
