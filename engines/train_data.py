"""Training samples: random 128x128 crops of OK images, augmented, half with a synthetic defect."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np

from engines.data import DataError, read_image
from engines.synth import synthesize
from pipeline.vision.tiling import downscale


@dataclass
class SampleConfig:
    tile: int = 128
    channels: int = 1
    mean: float = 0.5
    std: float = 0.25
    defect_prob: float = 0.5
    border_prob: float = 0.3  # crops aligned to an image border, where chips and breaks happen
    generators: tuple[str, ...] = ()  # engines.synth names to draw from; empty = engines.synth.DEFAULT_GENERATORS


def load_images(files: Sequence[Path], channels: int, tile: int, scale: float = 1.0) -> list[np.ndarray]:
    """The training images, downscaled by ``scale`` (< 1) as the detector's coarse pass does, and
    reflect-padded up to one tile where smaller."""
    images = []
    for f in files:
        img = read_image(f, channels)
        if scale != 1.0:
            img = downscale(img, scale)
        h, w = img.shape[:2]
        if h < 16 or w < 16:
            raise DataError(f"{f}: image is {w}x{h}; training needs images of at least 16x16 px")
        if h < tile or w < tile:
            pad = ((0, max(0, tile - h)), (0, max(0, tile - w))) + (((0, 0),) if img.ndim == 3 else ())
            img = np.pad(img, pad, mode="reflect")
        images.append(img)
    return images


def _crop(rng: np.random.Generator, img: np.ndarray, tile: int, border_prob: float) -> tuple[np.ndarray, list[str]]:
    h, w = img.shape[:2]
    y = int(rng.integers(0, h - tile + 1))
    x = int(rng.integers(0, w - tile + 1))
    if rng.random() < border_prob:
        # One border, and a third of the time a corner too: corners (chamfers, notches) are where
        # good parts look most unusual, and inference tiles always cover them.
        side = int(rng.integers(4))
        if side < 2:
            y = 0 if side == 0 else h - tile
        else:
            x = 0 if side == 2 else w - tile
        if rng.random() < 1 / 3:
            if side < 2:
                x = 0 if rng.random() < 0.5 else w - tile
            else:
                y = 0 if rng.random() < 0.5 else h - tile
    sides = [s for s, on in (("top", y == 0), ("bottom", y == h - tile), ("left", x == 0), ("right", x == w - tile)) if on]
    return img[y:y + tile, x:x + tile], sides


def _augment(rng: np.random.Generator, tile01: np.ndarray) -> np.ndarray:
    """Photometric and geometric augmentation of an OK crop (before any defect is added)."""
    out = tile01
    if rng.random() < 0.5:
        out = out[:, ::-1]
    if rng.random() < 0.5:
        out = out[::-1]
    contrast = rng.uniform(0.7, 1.3)
    brightness = rng.uniform(-0.15, 0.15)
    out = (out - out.mean()) * contrast + out.mean() + brightness
    if rng.random() < 0.3:
        out = cv2.GaussianBlur(np.ascontiguousarray(out), (0, 0), rng.uniform(0.3, 1.0))
    if rng.random() < 0.3:
        out = out + rng.normal(0, rng.uniform(0.005, 0.03), out.shape).astype(np.float32)
    return np.clip(np.ascontiguousarray(out), 0.0, 1.0).astype(np.float32)


def make_sample(rng: np.random.Generator, images: Sequence[np.ndarray], cfg: SampleConfig,
                strength_range: tuple[float, float], with_defects: bool = True):
    """One training sample: ``(x (C,T,T) normalised, mask (1,T,T), label float, generator name)``."""
    img = images[int(rng.integers(len(images)))]
    crop, sides = _crop(rng, img, cfg.tile, cfg.border_prob)
    # ``sides`` are the unflipped crop's image borders; after _augment's flips half of the chips
    # edge_chip cuts from them go into the part's interior instead. Following the flips lowered AUPRO by
    # 0.006-0.007 on two seeds of the coarse-map network, and every shipped network was trained this
    # way, so it stays.
    tile01 = _augment(rng, crop.astype(np.float32) / 255.0)
    mask = np.zeros(tile01.shape[:2], np.float32)
    name = "none"
    if with_defects and rng.random() < cfg.defect_prob:
        strength = float(rng.uniform(*strength_range))
        donors = [images[int(rng.integers(len(images)))].astype(np.float32) / 255.0]
        tile01, mask, name = synthesize(tile01, rng, strength, names=cfg.generators or None, donors=donors,
                                        edge_sides=sides)
    chw = tile01[None] if tile01.ndim == 2 else tile01.transpose(2, 0, 1)
    x = ((chw - cfg.mean) / cfg.std).astype(np.float32)
    return x, mask[None], float(mask.sum() > 0), name
