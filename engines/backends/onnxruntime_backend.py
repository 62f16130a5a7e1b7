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
        if not spin:  # its threads sleep between runs instead of spinning on the cores another session needs
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = ort.InferenceSession(str(self.model_dir / onnx_file), options,
                                            providers=providers or ["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name

    def coarse_map_options(self, options: dict) -> dict:
        """The coarse-map network's session does not spin: it runs a few tiles between the main
        session's runs, and its spinning threads held the cores the main session needed (2 cores,
        shipped model, development images: 112 ms per image spinning, 87-90 not, 74-77 without
        the coarse-map network; README, "A map made at half scale")."""
        return {**options, "spin": False}

    def infer(self, tiles: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        maps, scores = self.session.run(None, {self.input_name: self.check_input(tiles)})
        return maps, scores
