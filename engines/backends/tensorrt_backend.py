"""TensorRT backend (TensorRT 10 and 11 tensor-address API, one stream per worker), with CUDA
memory, streams and graphs through ``engines.cuda_rt`` (cuda-python, or pycuda where installed).

Written to the documented API (``set_input_shape``, ``set_tensor_address``, ``execute_async_v3``,
unchanged from 10 to 11) and tested against stand-ins of TensorRT and CUDA
(``tests/test_tensorrt.py``); it has not been run against a real TensorRT here.
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
                 cuda_graph_batch: int = 0, trt=None, cuda=None) -> None:
        super().__init__(model_dir, meta)
        from engines.tensorrt_build import import_tensorrt, open_cuda, sidecar_path

        trt = trt or import_tensorrt()
        self.engine_path = Path(engine) if engine else self.model_dir / ENGINE_NAME
        side = sidecar_path(self.engine_path)
        if not self.engine_path.is_file() or not side.is_file():
            raise BackendUnavailable(f"{self.engine_path}: no TensorRT engine (or its .json sidecar); build one "
                                     f"with build_engine --model {self.model_dir} --out {self.engine_path}")
        self.rt = (cuda or open_cuda)()  # closed by close(), after everything allocated on it
        self.engine = self.context = None
        self.device_buf: dict[str, int] = {}
        self.stream = 0
        self._graph = None
        try:
            self._open(trt, side, cuda_graph_batch)
        except BaseException:
            self.close()
            raise

    def _open(self, trt, side: Path, cuda_graph_batch: int) -> None:
        from engines.tensorrt_build import sha256_file

        gpu_name, _cc = self.rt.identity()
        engine_meta = json.loads(side.read_text())
        problems = engine_problems(engine_meta, trt.__version__, gpu_name, sha256_file(self.model_dir / ONNX_NAME))
        if problems:
            raise EngineMismatch(f"{self.engine_path}: " + "; ".join(problems) + "; "
                                 + rebuild_hint(self.model_dir, self.engine_path, engine_meta))
        self.max_batch = int(engine_meta["max_batch"])
        self._gpu = gpu_name
        self._precision = str(engine_meta.get("precision", self.meta.precision))
        self.logger = trt.Logger(trt.Logger.WARNING)
        self.runtime = trt.Runtime(self.logger)
        self.engine = self.runtime.deserialize_cuda_engine(self.engine_path.read_bytes())
        if self.engine is None:
            raise EngineMismatch(f"{self.engine_path}: TensorRT could not deserialize the engine; "
                                 + rebuild_hint(self.model_dir, self.engine_path, engine_meta))
        self.context = self.engine.create_execution_context()
        self.stream = self.rt.stream()  # one stream per backend instance, i.e. per worker process
        self.names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.input_name = next(n for n in self.names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT)
        self.output_names = [n for n in self.names if n != self.input_name]
        t = self.meta.tile_size
        # The score's per-tile shape comes from the engine: () or (2,) with a coarse memory.
        shapes = {self.input_name: (self.meta.in_channels, t, t), "map": (1, t, t)}
        self.host = {}
        for n in self.names:
            per_tile = shapes.get(n, tuple(self.engine.get_tensor_shape(n))[1:])
            dtype = trt.nptype(self.engine.get_tensor_dtype(n))
            self.host[n] = self.rt.pinned((self.max_batch, *per_tile), dtype)
            self.device_buf[n] = self.rt.malloc(self.host[n].nbytes)
            if not self.context.set_tensor_address(n, self.device_buf[n]):
                raise RuntimeError(f"{self.engine_path}: set_tensor_address({n!r}) failed")
        self.graph_batch = cuda_graph_batch

    @property
    def device(self) -> str:
        return f"cuda:{self._gpu} (TensorRT, {self.rt.library})"

    @property
    def precision(self) -> str:
        return self._precision  # the engine's build precision (sidecar), not the ONNX model's

    def _enqueue(self, n: int) -> None:
        if not self.context.set_input_shape(self.input_name, (n, *self.host[self.input_name].shape[1:])):
            raise RuntimeError(f"{self.engine_path}: set_input_shape({n}) failed (outside the engine's profile?)")
        if not self.context.execute_async_v3(self.stream):
            raise RuntimeError(f"{self.engine_path}: execute_async_v3 failed")

    def _capture_graph(self, n: int) -> None:
        """Capture the fixed-batch enqueue into a CUDA graph, replayed per call. A failed capture
        raises (engines.cuda_rt.CudaError) and leaves no half-made graph behind."""
        self._enqueue(n)  # one normal run first, as TensorRT requires before capture
        self.rt.synchronize(self.stream)
        self.rt.begin_capture(self.stream)
        try:
            self._enqueue(n)
        finally:  # end the capture even when the enqueue failed, or the stream stays in capture mode
            graph = self.rt.end_capture(self.stream)
        self._graph = graph

    def infer(self, tiles: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        tiles = self.check_input(tiles)
        maps, scores = [], []
        for i in range(0, len(tiles), self.max_batch):
            chunk = tiles[i:i + self.max_batch]
            n = len(chunk)
            self.host[self.input_name][:n] = chunk
            self.rt.htod_async(self.device_buf[self.input_name], self.host[self.input_name][:n], self.stream)
            if self.graph_batch and n == self.graph_batch:
                if self._graph is None:
                    self._capture_graph(n)
                self.rt.launch(self._graph[1], self.stream)
            else:
                self._enqueue(n)
            for name in self.output_names:
                self.rt.dtoh_async(self.host[name][:n], self.device_buf[name], self.stream)
            self.rt.synchronize(self.stream)
            maps.append(self.host["map"][:n].astype(np.float32))
            scores.append(self.host["score"][:n].astype(np.float32))
        return np.concatenate(maps), np.concatenate(scores)

    def coarse_map_options(self, options: dict) -> dict:
        from engines.tensorrt_build import coarse_map_engine_path

        return {**options, "engine": coarse_map_engine_path(self.engine_path)}

    def close(self) -> None:
        """Release in dependency order: the graph, the execution context and engine (TensorRT
        objects using the device), then the buffers and stream, then the CUDA context itself."""
        super().close()
        rt = getattr(self, "rt", None)
        if rt is None:
            return
        if self.stream:
            rt.synchronize(self.stream)
        if self._graph is not None:
            rt.destroy_graph(*self._graph)
            self._graph = None
        self.context = None
        self.engine = None
        for buf in self.device_buf.values():
            rt.free(buf)
        self.device_buf = {}
        if self.stream:
            rt.destroy_stream(self.stream)
            self.stream = 0
        rt.close()
        self.rt = None
