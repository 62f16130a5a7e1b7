"""PyTorch backend: CPU, or CUDA with fp16, channels-last and optional CUDA-graph capture.

Loads ``model.pt`` (a plain state dict, ``weights_only=True``) beside the ONNX file, so GPU speed
can be measured where TensorRT is absent.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from engines.artifact import ModelMeta
from engines.backends.base import Backend, BackendUnavailable

WEIGHTS_NAME = "model.pt"


class TorchBackend(Backend):
    name = "torch"

    def __init__(self, model_dir: Path, meta: ModelMeta, device: str = "auto", fp16: bool | None = None,
                 cuda_graph_batch: int = 0, threads: int = 0) -> None:
        super().__init__(model_dir, meta)
        try:
            import torch
        except ImportError as exc:
            raise BackendUnavailable("torch is not installed; pip install -e .[train]") from exc
        from engines.inference_model import build_model, inference_module, load_weights
        from engines.artifact import ALL_MEMORY_NAMES
        from engines.tile_memory import MEMORY_NAMES

        self.torch = torch
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise BackendUnavailable("torch backend on cuda asked for, but torch sees no CUDA device")
        if threads:
            torch.set_num_threads(threads)
        self._device = torch.device(device)
        self.fp16 = (self._device.type == "cuda") if fp16 is None else fp16
        if self._device.type == "cuda" and not self.fp16:
            # fp32 means fp32: cuDNN would otherwise run convolutions in TF32 (10-bit mantissa).
            torch.backends.cudnn.allow_tf32 = False
            torch.backends.cuda.matmul.allow_tf32 = False
        weights = self.model_dir / WEIGHTS_NAME
        if not weights.is_file():
            raise BackendUnavailable(f"{weights}: missing; the torch backend needs the state dict written by export_model")
        state = torch.load(weights, map_location="cpu", weights_only=True)
        net = load_weights(build_model(meta.arch, meta.in_channels, meta.width), state, str(weights))
        if any(f"{name}.bank" in state and getattr(net, name, None) is None for name in MEMORY_NAMES):
            raise BackendUnavailable(f"{weights}: its tile memory is from an older version that the torch backend "
                                     "no longer serves; re-export the model (export_model --memory-data)")
        module = inference_module(meta.arch, net).to(self._device)
        if self._device.type == "cuda":
            module = module.to(memory_format=torch.channels_last)
        self.dtype = torch.float16 if self.fp16 else torch.float32
        # The memories stay fp32 under fp16 (never cast, so their buffers keep every bit):
        # |z|^2 - 2 z.b + |b|^2 cancels, and fp16 keeps 11 bits of terms in the hundreds.
        for name, child in net.named_children():
            if name not in ALL_MEMORY_NAMES:
                child.to(self.dtype)
        self.module = module
        self.graph_batch = cuda_graph_batch if self._device.type == "cuda" else 0
        self._graph = None

    @property
    def device(self) -> str:
        if self._device.type == "cuda":
            return f"cuda:{self.torch.cuda.get_device_name(self._device)}"
        return "cpu"

    @property
    def precision(self) -> str:
        return "fp16" if self.fp16 else self.meta.precision

    def _input_shape(self, batch: int) -> tuple[int, int, int, int]:
        return (batch, self.meta.in_channels, self.meta.tile_size, self.meta.tile_size)

    def _capture(self, batch: int) -> None:
        torch = self.torch
        self._static_in = torch.zeros(self._input_shape(batch), device=self._device, dtype=self.dtype).to(memory_format=torch.channels_last)
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream), torch.inference_mode():
            for _ in range(3):  # warm up kernels before capture
                self.module(self._static_in)
        torch.cuda.current_stream().wait_stream(stream)
        self._graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self._graph), torch.inference_mode():
            self._static_out = self.module(self._static_in)

    def device_ms(self, batch: int, calls: int = 50) -> float | None:
        """CUDA-event median of one call on device-resident random input (CUDA-graph replay when this
        backend captures ``batch``), transfers excluded; None on CPU."""
        if self._device.type != "cuda":
            return None
        torch = self.torch
        if self.graph_batch == batch:
            if self._graph is None:
                self._capture(batch)
            self._static_in.normal_()  # captured on zeros; time on data
            run = self._graph.replay
        else:
            x = torch.randn(self._input_shape(batch), device=self._device, dtype=self.dtype).contiguous(memory_format=torch.channels_last)

            def run() -> None:
                with torch.inference_mode():
                    self.module(x)
        for _ in range(3):
            run()
        times = []
        for _ in range(calls):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            run()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
        return float(np.median(times))

    def infer(self, tiles: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        torch = self.torch
        tiles = self.check_input(tiles)
        if self.graph_batch and len(tiles) == self.graph_batch:
            if self._graph is None:
                self._capture(self.graph_batch)
            self._static_in.copy_(torch.from_numpy(tiles))
            self._graph.replay()
            maps, scores = self._static_out
        else:
            with torch.inference_mode():
                x = torch.from_numpy(tiles).to(self._device, self.dtype)
                if self._device.type == "cuda":
                    x = x.contiguous(memory_format=torch.channels_last)
                maps, scores = self.module(x)
        return maps.float().cpu().numpy(), scores.float().cpu().numpy()
