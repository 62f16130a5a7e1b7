"""The one inference interface and the registry of backends, chosen by name.

A backend takes normalised tiles ``(N, C, 128, 128) float32`` and returns defect probability maps
``(N, 1, 128, 128) float32`` and tile scores ``(N,) float32`` (``(N, 2)`` for a model with a coarse
tile memory: see :mod:`engines.inference_model`). Heavy imports (onnxruntime, torch,
tensorrt) happen inside each backend's constructor, so importing this package costs nothing.
"""
from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from pathlib import Path

import numpy as np

from engines.artifact import ModelMeta, model_paths

# name -> "module:Class"; adding a backend is one module and one line here.
BACKENDS: dict[str, str] = {
    "onnxruntime": "engines.backends.onnxruntime_backend:OnnxRuntimeBackend",
    "torch": "engines.backends.torch_backend:TorchBackend",
    "tensorrt": "engines.backends.tensorrt_backend:TensorRTBackend",
}


class BackendUnavailable(RuntimeError):
    """The backend cannot run on this machine (missing library or device); the message says why."""


class Backend(ABC):
    name: str = ""

    def __init__(self, model_dir: Path, meta: ModelMeta) -> None:
        self.model_dir = Path(model_dir)
        self.meta = meta

    @property
    def device(self) -> str:
        return "cpu"

    @property
    def precision(self) -> str:
        """The arithmetic it runs: the model folder's unless the backend lowers it (torch fp16 on CUDA)."""
        return self.meta.precision

    @abstractmethod
    def infer(self, tiles: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Normalised ``(N, C, T, T)`` float32 -> (maps ``(N, 1, T, T)``, scores ``(N,)``)."""

    def check_input(self, tiles: np.ndarray) -> np.ndarray:
        m = self.meta
        expected = (m.in_channels, m.tile_size, m.tile_size)
        if tiles.ndim != 4 or tuple(tiles.shape[1:]) != expected:
            raise ValueError(f"{self.name} backend: input shape {tuple(tiles.shape)}; expected (N, {expected[0]}, "
                             f"{expected[1]}, {expected[2]}) for this model")
        return np.ascontiguousarray(tiles, dtype=np.float32)

    def device_ms(self, batch: int, calls: int = 50) -> float | None:
        """Median milliseconds of one ``batch`` on an accelerator with the input already on it and the
        outputs left there (what TensorRT's trtexec calls GPU compute time); None where the backend
        has no such split (CPU backends: their end-to-end time is already the compute time)."""
        return None

    def close(self) -> None:
        """Release device resources; default: nothing to release."""


def backend_class(name: str) -> type[Backend]:
    if name not in BACKENDS:
        raise ValueError(f"unknown backend {name!r}; valid: {sorted(BACKENDS)}")
    module, cls = BACKENDS[name].split(":")
    return getattr(importlib.import_module(module), cls)


def load_backend(name: str, model: str | Path, **options) -> Backend:
    """Open the model folder ``model`` with the backend ``name`` (raises BackendUnavailable)."""
    onnx_path, meta = model_paths(model)
    return backend_class(name)(Path(model), meta, **options)
