"""The one inference interface and the registry of backends, chosen by name.

A backend takes normalised tiles ``(N, C, 128, 128) float32`` and returns defect probability maps
``(N, 1, 128, 128) float32`` and tile scores ``(N,) float32`` (``(N, 2)`` for a model with a coarse
tile memory: see :mod:`engines.inference_model`). Heavy imports (onnxruntime, torch,
tensorrt) happen inside each backend's constructor, so importing this package costs nothing.

A model with a coarse-map network (``ModelMeta.coarse_map_weight`` > 0 and the model folder
``coarse_map/`` inside its own) gets a second backend of the same kind for it, ``coarse_map``:
callers run the coarse pass's tiles through it for their maps (:func:`map_coarse_tiles`).
"""
from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from pathlib import Path

import numpy as np

from engines.artifact import COARSE_MAP_DIR, ArtifactError, ModelMeta, model_paths

# name -> "module:Class"; adding a backend is one module and one line here.
BACKENDS: dict[str, str] = {
    "onnxruntime": "engines.backends.onnxruntime_backend:OnnxRuntimeBackend",
    "onnxruntime-cuda": "engines.backends.onnxruntime_backend:OnnxRuntimeCudaBackend",
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
        self.coarse_map: Backend | None = None  # the coarse-map network's backend (load_backend sets it)

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

    def coarse_map_options(self, options: dict) -> dict:
        """The options to open this model's coarse-map network with; default: this backend's own."""
        return options

    def close(self) -> None:
        """Release device resources; default: nothing to release (a subclass that overrides this
        calls it too, for the coarse-map network's backend)."""
        if self.coarse_map is not None:
            self.coarse_map.close()


def backend_class(name: str) -> type[Backend]:
    if name not in BACKENDS:
        raise ValueError(f"unknown backend {name!r}; valid: {sorted(BACKENDS)}")
    module, cls = BACKENDS[name].split(":")
    return getattr(importlib.import_module(module), cls)


def load_backend(name: str, model: str | Path, **options) -> Backend:
    """Open the model folder ``model`` with the backend ``name`` (raises BackendUnavailable), and its
    coarse-map network with the same backend when the model has one."""
    onnx_path, meta = model_paths(model)
    cls = backend_class(name)
    backend = _open(cls, Path(model), meta, options)
    if meta.coarse_map_weight > 0:
        folder = Path(model) / COARSE_MAP_DIR
        if not folder.is_dir():
            backend.close()
            raise ArtifactError(f"{Path(model) / 'model.json'}: coarse_map_weight is {meta.coarse_map_weight} but "
                                f"{folder} is missing; add it (export_model --from-model {model} --coarse-map RUN/last.pt "
                                "--out MODEL) or set coarse_map_weight to 0")
        _, sub_meta = model_paths(folder)
        try:
            backend.coarse_map = _open(cls, folder, sub_meta, backend.coarse_map_options(options))
        except BaseException:
            backend.close()
            raise
    return backend


def _open(cls: type, folder: Path, meta, options: dict) -> Backend:
    """``cls(folder, meta, **options)``; a file the runtime cannot read (truncated, corrupt, from
    another tool) becomes an ArtifactError that names it and how to make it again."""
    try:
        return cls(folder, meta, **options)
    except (BackendUnavailable, ArtifactError):
        raise
    except Exception as exc:  # each runtime raises its own types for an unreadable model
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ArtifactError(f"{folder}: the {cls.name} backend cannot load this model ({first}); export it "
                            f"again (export_model --from-model or --checkpoint ... --out {folder})") from exc


def map_coarse_tiles(backend: Backend, tiles_u8: np.ndarray, maps: np.ndarray, coarse: np.ndarray) -> np.ndarray:
    """``maps`` (of the uint8 ``tiles_u8``) with the rows flagged in the boolean ``coarse`` replaced
    by the coarse-map network's maps of those tiles; ``maps`` as it is for a model without one."""
    net = backend.coarse_map
    if net is None or not coarse.any():
        return maps
    out = maps.copy()
    out[coarse] = net.infer(net.meta.normalise(tiles_u8[coarse]))[0]
    return out
