"""TensorRT's implicit INT8 calibration: the entropy calibrator fed from device memory, its cache
beside the engine, and the fixed-size batches both ONNX Runtime and TensorRT calibrate on. The
tiles themselves come from ``calibration.int8.calibration_tiles``."""
from __future__ import annotations

from pathlib import Path
from typing import Iterator

import numpy as np


def calibration_batches(tiles: np.ndarray, batch: int) -> Iterator[np.ndarray]:
    for i in range(0, len(tiles) - batch + 1, batch):  # full batches only: TensorRT wants a fixed size
        yield np.ascontiguousarray(tiles[i:i + batch])


def int8_cache_path(engine: str | Path, onnx_sha256: str) -> Path:
    """The calibration cache of an engine, beside it and keyed on the model graph it was made
    from: a retrained or re-exported model never reads another's scales."""
    engine = Path(engine)
    return engine.with_name(f"{engine.stem}.{onnx_sha256[:16]}.int8.cache")


def make_entropy_calibrator(tiles: np.ndarray, batch: int, cache_file: Path, cuda, trt=None):
    """A ``trt.IInt8EntropyCalibrator2`` feeding ``tiles`` through one device buffer of ``cuda``
    (``engines.cuda_rt``), ``batch`` tiles per call: the batch of the calibration profile.

    The cache is read back on later builds of the same graph, so calibration runs once per model.
    """
    if trt is None:
        import tensorrt as trt

    class EntropyCalibrator(trt.IInt8EntropyCalibrator2):
        def __init__(self) -> None:
            super().__init__()
            self.batches = calibration_batches(tiles, batch)
            self.device_input = cuda.malloc(int(batch * np.prod(tiles.shape[1:]) * 4))

        def get_batch_size(self) -> int:
            return batch

        def get_batch(self, names):  # noqa: ARG002 - TensorRT passes the input names
            data = next(self.batches, None)
            if data is None:
                return None
            cuda.htod(self.device_input, data)
            return [int(self.device_input)]

        def read_calibration_cache(self):
            return cache_file.read_bytes() if cache_file.is_file() else None

        def write_calibration_cache(self, cache: bytes) -> None:
            cache_file.parent.mkdir(parents=True, exist_ok=True)
            cache_file.write_bytes(bytes(cache))

    return EntropyCalibrator()
