"""ONNX Runtime backend (CPU by default): the runtime path that needs neither torch nor CUDA."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from engines.artifact import ONNX_NAME, ModelMeta
from engines.backends.base import Backend, BackendUnavailable


class OnnxRuntimeBackend(Backend):
    name = "onnxruntime"

    def __init__(self, model_dir: Path, meta: ModelMeta, threads: int = 0, onnx_file: str = ONNX_NAME,
                 providers: list[str] | None = None, spin: bool = True) -> None:
        super().__init__(model_dir, meta)
        try:
            import onnxruntime as ort
        except ImportError as exc:  # pragma: no cover - onnxruntime is a core dependency
            raise BackendUnavailable(f"onnxruntime is not installed ({exc}); pip install onnxruntime") from exc
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if threads:
            options.intra_op_num_threads = threads
        if not spin:  # its threads sleep between runs instead of spinning on the cores another model needs
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.net = ort.InferenceSession(str(self.model_dir / onnx_file), options,
                                            providers=providers or ["CPUExecutionProvider"])
        self.input_name = self.net.get_inputs()[0].name

    def coarse_map_options(self, options: dict) -> dict:
        """The coarse-map network does not spin in ONNX Runtime: it runs a few tiles between
        the main network's runs, and its spinning threads held the cores the main network needed (2 cores,
        shipped model, development images: 112 ms per image spinning, 87-90 not, 74-77 without
        the coarse-map network)."""
        return {**options, "spin": False}

    def infer(self, tiles: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        maps, scores = self.net.run(None, {self.input_name: self.check_input(tiles)})
        return maps, scores


class OnnxRuntimeCudaBackend(OnnxRuntimeBackend):
    """ONNX Runtime on an NVIDIA GPU (CUDA execution provider). Needs the onnxruntime-gpu package
    in place of onnxruntime (``pip install -e .[gpu]``; the two must not be installed together)."""

    name = "onnxruntime-cuda"

    def __init__(self, model_dir: Path, meta: ModelMeta, threads: int = 0, onnx_file: str = ONNX_NAME,
                 spin: bool = True, device_id: int = 0) -> None:
        try:
            import onnxruntime as ort
        except ImportError as exc:
            raise BackendUnavailable(f"onnxruntime is not installed ({exc}); pip install -e .[gpu]") from exc
        if "CUDAExecutionProvider" not in ort.get_available_providers():
            raise BackendUnavailable("this onnxruntime has no CUDA execution provider (available: "
                                     f"{', '.join(ort.get_available_providers())}); install onnxruntime-gpu in place "
                                     "of onnxruntime: pip uninstall -y onnxruntime && pip install -e .[gpu]")
        super().__init__(model_dir, meta, threads, onnx_file,
                         providers=[("CUDAExecutionProvider", {"device_id": device_id}), "CPUExecutionProvider"],
                         spin=spin)
        # ONNX Runtime falls back to the CPU, with a warning only, when the CUDA libraries do not load
        if self.net.get_providers()[0] != "CUDAExecutionProvider":
            raise BackendUnavailable("onnxruntime-gpu could not start its CUDA execution provider (CUDA or cuDNN "
                                     "libraries missing or not matching; see its warning above); the model would "
                                     "run on the CPU")
        self._device_id = device_id

    @property
    def device(self) -> str:
        return f"cuda:{self._device_id} (onnxruntime)"
