"""INT8 calibration data: normalised OK tiles from a folder, and TensorRT's entropy calibrator.

``calibration_batches`` is pure numpy (used by both TensorRT and the ONNX Runtime quantiser, and
tested without a GPU). The TensorRT calibrator class is created lazily so importing this module
never needs TensorRT or CUDA.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterator

import numpy as np

from engines.artifact import ModelMeta
from engines.data import DataError, list_images, read_image
from pipeline.vision.tiling import extract_tiles, tile_grid

CACHE_DIR = Path(__file__).parent / "cache"


def calibration_tiles(folder: str | Path, meta: ModelMeta, max_tiles: int = 512, overlap: float = 0.0,
                      seed: int = 0) -> np.ndarray:
    """Up to ``max_tiles`` normalised ``(N, C, T, T)`` float32 tiles from the OK images in ``folder``
    (or its ``train/good``), sampled evenly across images."""
    folder = Path(folder)
    if (folder / "train" / "good").is_dir():
        folder = folder / "train" / "good"
    files = list_images(folder)
    if not files:
        raise DataError(f"{folder}: no images for INT8 calibration; pass a folder of OK images")
    tiles = []
    for f in files:
        img = read_image(f, meta.in_channels)
        tiles.append(extract_tiles(img, tile_grid(img.shape[0], img.shape[1], meta.tile_size, overlap)))
    all_tiles = np.concatenate(tiles)
    rng = np.random.default_rng(seed)
    if len(all_tiles) > max_tiles:
        all_tiles = all_tiles[np.sort(rng.choice(len(all_tiles), max_tiles, replace=False))]
    return meta.normalise(all_tiles)


def calibration_batches(tiles: np.ndarray, batch: int) -> Iterator[np.ndarray]:
    for i in range(0, len(tiles) - batch + 1, batch):  # full batches only: TensorRT wants a fixed size
        yield np.ascontiguousarray(tiles[i:i + batch])


def cache_path(model_name: str) -> Path:
    return CACHE_DIR / f"{model_name}.int8.cache"


def make_entropy_calibrator(tiles: np.ndarray, batch: int, cache_file: Path):
    """A ``trt.IInt8EntropyCalibrator2`` feeding ``tiles`` through one device buffer (pycuda).

    The cache is read back on later builds, so calibration runs once per model; delete the cache
    file after retraining.
    """
    import pycuda.driver as cuda
    import tensorrt as trt

    class EntropyCalibrator(trt.IInt8EntropyCalibrator2):
        def __init__(self) -> None:
            super().__init__()
            self.batches = calibration_batches(tiles, batch)
            self.device_input = cuda.mem_alloc(int(batch * np.prod(tiles.shape[1:]) * 4))

        def get_batch_size(self) -> int:
            return batch

        def get_batch(self, names):  # noqa: ARG002 - TensorRT passes the input names
            try:
                data = next(self.batches)
            except StopIteration:
                return None
            cuda.memcpy_htod(self.device_input, data)
            return [int(self.device_input)]

        def read_calibration_cache(self):
            return cache_file.read_bytes() if cache_file.is_file() else None

        def write_calibration_cache(self, cache: bytes) -> None:
            cache_file.parent.mkdir(parents=True, exist_ok=True)
            cache_file.write_bytes(bytes(cache))

    return EntropyCalibrator()
