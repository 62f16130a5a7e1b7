"""A PNG grid of OK crops, their synthetic defects and masks, one row per generator."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import cv2
import numpy as np

from engines.data import training_images
from engines.synth import GENERATORS
from engines.train_data import load_images

LABEL_W = 110


def gallery(images: Sequence[np.ndarray], rng: np.random.Generator, per_row: int = 4, tile: int = 128) -> np.ndarray:
    """uint8 BGR grid: for each generator, ``per_row`` triplets (OK | defect | mask outline)."""
    rows = []
    for name, gen in GENERATORS.items():
        cells = []
        for k in range(per_row):
            strength = k / max(1, per_row - 1)  # left faint, right strong
            for _try in range(16):  # another crop when the generator declines this one (too little to change)
                img = images[int(rng.integers(len(images)))]
                h, w = img.shape[:2]
                y, x = int(rng.integers(0, h - tile + 1)), int(rng.integers(0, w - tile + 1))
                ok = img[y:y + tile, x:x + tile].astype(np.float32) / 255.0
                donor = images[int(rng.integers(len(images)))].astype(np.float32) / 255.0
                bad, mask = gen(ok, rng, strength, donors=[donor], edge_sides=("top", "bottom", "left", "right"))
                if mask.sum() > 0:
                    break
            to_bgr = lambda a: cv2.cvtColor((np.clip(a, 0, 1) * 255).astype(np.uint8),
                                            cv2.COLOR_GRAY2BGR if a.ndim == 2 else cv2.COLOR_RGB2BGR)
            mask_img = np.zeros((tile, tile, 3), np.uint8)
            mask_img[mask > 0] = (255, 255, 255)
            cells += [to_bgr(ok), to_bgr(bad), mask_img, np.full((tile, 4, 3), 64, np.uint8)]
        label = np.zeros((tile, LABEL_W, 3), np.uint8)
        cv2.putText(label, name, (4, tile // 2), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (255, 255, 255), 1, cv2.LINE_AA)
        rows.append(np.hstack([label] + cells))
        rows.append(np.full((4, rows[-1].shape[1], 3), 64, np.uint8))
    return np.vstack(rows)


def write_gallery(data: str | Path, out: str | Path, per_row: int = 4, seed: int = 0, channels: int = 1,
                  max_images: int = 64) -> Path:
    files = training_images(data)[:max_images]
    images = load_images(files, channels, 128)
    grid = gallery(images, np.random.default_rng(seed), per_row)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(out), grid):
        raise ValueError(f"{out}: could not write the gallery; use a .png path in a writable folder")
    return out
