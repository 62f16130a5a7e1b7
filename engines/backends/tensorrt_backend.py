"""TensorRT backend (TensorRT 10+ tensor-address API, pycuda memory, one stream per worker).

Unverified on hardware here: no TensorRT exists on the development or CI machines. Written to the
documented TensorRT 10 API: ``set_input_shape``, ``set_tensor_address``, ``execute_async_v3``.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from engines.artifact import ONNX_NAME, ModelMeta
from engines.backends.base import Backend, BackendUnavailable

ENGINE_NAME = "model.engine"


class EngineMismatch(ValueError):
    pass


def engine_problems(engine_meta: dict, tensorrt_version: str, gpu_name: str, onnx_sha256: str) -> list[str]:
    """Why a built engine must not run here (empty when it may). Pure, so it is tested without a GPU."""
    problems = []
    if engine_meta.get("tensorrt_version") != tensorrt_version:
        problems.append(f"built with TensorRT {engine_meta.get('tensorrt_version')}, running {tensorrt_version}")
    if engine_meta.get("gpu_name") != gpu_name:
        problems.append(f"built for GPU {engine_meta.get('gpu_name')!r}, running on {gpu_name!r}")
    if engine_meta.get("onnx_sha256") != onnx_sha256:
        problems.append("built from a different model.onnx (sha256 differs)")
    return problems


def rebuild_hint(model_dir: Path, engine: Path, meta: dict) -> str:
    return (f"rebuild it: build_engine --model {model_dir} --precision {meta.get('precision', 'fp16')} "
            f"--max-batch {meta.get('max_batch', 64)} --out {engine}")


class TensorRTBackend(Backend):
    name = "tensorrt"

    def __init__(self, model_dir: Path, meta: ModelMeta, engine: str | Path | None = None,
                 cuda_graph_batch: int = 0) -> None:
        super().__init__(model_dir, meta)
        from engines.tensorrt_build import gpu_identity, import_tensorrt, sha256_file, sidecar_path

        trt = import_tensorrt()
        gpu_name, _cc = gpu_identity()
        self.engine_path = Path(engine) if engine else self.model_dir / ENGINE_NAME
        side = sidecar_path(self.engine_path)
        if not self.engine_path.is_file() or not side.is_file():
            raise BackendUnavailable(f"{self.engine_path}: no TensorRT engine (or its .json sidecar); build one "
                                     f"with build_engine --model {self.model_dir} --out {self.engine_path}")
        engine_meta = json.loads(side.read_text())
        problems = engine_problems(engine_meta, trt.__version__, gpu_name, sha256_file(self.model_dir / ONNX_NAME))
        if problems:
            raise EngineMismatch(f"{self.engine_path}: " + "; ".join(problems) + "; "
                                 + rebuild_hint(self.model_dir, self.engine_path, engine_meta))
        import pycuda.driver as cuda

        cuda.init()
        self.cuda = cuda
        self.context_cuda = cuda.Device(0).retain_primary_context()
        self.context_cuda.push()
        self.max_batch = int(engine_meta["max_batch"])
        self._gpu = gpu_name
        self._precision = str(engine_meta.get("precision", meta.precision))
        logger = trt.Logger(trt.Logger.WARNING)
        self.engine = trt.Runtime(logger).deserialize_cuda_engine(self.engine_path.read_bytes())
        if self.engine is None:
            raise EngineMismatch(f"{self.engine_path}: TensorRT could not deserialize the engine; "
                                 + rebuild_hint(self.model_dir, self.engine_path, engine_meta))
        self.context = self.engine.create_execution_context()
        self.stream = cuda.Stream()  # one stream per backend instance, i.e. per worker process
        self.names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.input_name = next(n for n in self.names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT)
        self.output_names = [n for n in self.names if n != self.input_name]
        t = meta.tile_size
        # The score's per-tile shape comes from the engine: () or (2,) with a coarse memory.
        shapes = {self.input_name: (meta.in_channels, t, t), "map": (1, t, t)}
        self.host, self.device_buf = {}, {}
        for n in self.names:
            per_tile = shapes.get(n, tuple(self.engine.get_tensor_shape(n))[1:])
            dtype = trt.nptype(self.engine.get_tensor_dtype(n))
            self.host[n] = cuda.pagelocked_empty((self.max_batch, *per_tile), dtype)
            self.device_buf[n] = cuda.mem_alloc(self.host[n].nbytes)
            self.context.set_tensor_address(n, int(self.device_buf[n]))
        self.graph_batch = cuda_graph_batch
        self._graph_exec = None
        self.context_cuda.pop()

    @property
    def device(self) -> str:
        return f"cuda:{self._gpu} (TensorRT)"

    @property
    def precision(self) -> str:
        return self._precision  # the engine's build precision (sidecar), not the ONNX model's

    def _enqueue(self, n: int) -> None:
        self.context.set_input_shape(self.input_name, (n, *self.host[self.input_name].shape[1:]))
        if not self.context.execute_async_v3(self.stream.handle):
            raise RuntimeError(f"{self.engine_path}: execute_async_v3 failed")

    def _capture_graph(self, n: int) -> None:
        """Capture the fixed-batch enqueue into a CUDA graph (cuda-python), replayed per call."""
        from cuda.bindings import runtime as cudart

        self._enqueue(n)  # one normal run first, as TensorRT requires before capture
        self.stream.synchronize()
        handle = self.stream.handle
        cudart.cudaStreamBeginCapture(handle, cudart.cudaStreamCaptureMode.cudaStreamCaptureModeGlobal)
        self._enqueue(n)
        _err, graph = cudart.cudaStreamEndCapture(handle)
        _err, self._graph_exec = cudart.cudaGraphInstantiate(graph, 0)

    def infer(self, tiles: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        tiles = self.check_input(tiles)
        maps, scores = [], []
        self.context_cuda.push()
        try:
            for i in range(0, len(tiles), self.max_batch):
                chunk = tiles[i:i + self.max_batch]
                n = len(chunk)
                self.host[self.input_name][:n] = chunk
                self.cuda.memcpy_htod_async(self.device_buf[self.input_name], self.host[self.input_name][:n], self.stream)
                if self.graph_batch and n == self.graph_batch:
                    if self._graph_exec is None:
                        self._capture_graph(n)
                    from cuda.bindings import runtime as cudart

                    cudart.cudaGraphLaunch(self._graph_exec, self.stream.handle)
                else:
                    self._enqueue(n)
                for name in self.output_names:
                    self.cuda.memcpy_dtoh_async(self.host[name][:n], self.device_buf[name], self.stream)
                self.stream.synchronize()
                maps.append(self.host["map"][:n].astype(np.float32))
                scores.append(self.host["score"][:n].astype(np.float32))
        finally:
            self.context_cuda.pop()
        return np.concatenate(maps), np.concatenate(scores)

    def coarse_map_options(self, options: dict) -> dict:
        from engines.tensorrt_build import coarse_map_engine_path

        return {**options, "engine": coarse_map_engine_path(self.engine_path)}

    def close(self) -> None:
        for buf in self.device_buf.values():
            buf.free()
        self.context_cuda.detach()
        super().close()
