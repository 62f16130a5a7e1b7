"""The CUDA calls the TensorRT path needs (device memory, pinned host memory, streams, CUDA
graphs), over cuda-python (NVIDIA's bindings: ``pip install cuda-python``, wheels for every
platform) or pycuda where that is installed. Every call's status is checked: a failed call raises
:class:`CudaError` naming the call and CUDA's own message; nothing is thrown away.

Imports are lazy: this module loads on machines without CUDA.
"""
from __future__ import annotations

import ctypes

import numpy as np


class CudaError(RuntimeError):
    """A CUDA call failed; the message names the call and CUDA's error."""


def import_cudart():
    """cuda-python's runtime module (``cuda.bindings.runtime`` from 12.6 on, ``cuda.cudart``
    before), or ImportError."""
    try:
        from cuda.bindings import runtime as cudart
    except ImportError:
        from cuda import cudart  # older cuda-python
    return cudart


def checked(cudart, result, call: str):
    """The values of a cuda-python call's ``(status, *values)`` result; raises CudaError on a
    status other than success. A bare status (calls that return nothing) is accepted too."""
    status, values = (result[0], result[1:]) if isinstance(result, tuple) else (result, ())
    if status != cudart.cudaError_t.cudaSuccess:
        try:
            text = cudart.cudaGetErrorString(status)[1]
            text = text.decode() if isinstance(text, bytes) else str(text)
        except Exception:  # the message is a courtesy; the failure is reported either way
            text = ""
        raise CudaError(f"{call} failed: {getattr(status, 'name', status)}{': ' + text if text else ''}")
    return values[0] if len(values) == 1 else values


class CudaRuntime:
    """Device 0 through cuda-python's runtime API (the primary context TensorRT also uses)."""

    library = "cuda-python"

    def __init__(self, cudart=None) -> None:
        self.cudart = cudart or import_cudart()
        self._pinned: list[int] = []
        self.call("cudaSetDevice", 0)

    def call(self, name: str, *args):
        return checked(self.cudart, getattr(self.cudart, name)(*args), name)

    def identity(self) -> tuple[str, str]:
        props = self.call("cudaGetDeviceProperties", 0)
        name = props.name.decode() if isinstance(props.name, bytes) else str(props.name)
        return name.rstrip("\x00"), f"{props.major}.{props.minor}"

    def malloc(self, nbytes: int) -> int:
        return int(self.call("cudaMalloc", nbytes))

    def free(self, ptr: int) -> None:
        self.call("cudaFree", ptr)

    def pinned(self, shape: tuple, dtype) -> np.ndarray:
        """A page-locked host array (fast, asynchronous copies); freed by :meth:`close`."""
        nbytes = int(np.prod(shape)) * np.dtype(dtype).itemsize
        ptr = int(self.call("cudaMallocHost", max(nbytes, 1)))
        self._pinned.append(ptr)
        raw = (ctypes.c_byte * max(nbytes, 1)).from_address(ptr)
        return np.frombuffer(raw, dtype=dtype, count=int(np.prod(shape))).reshape(shape)

    def stream(self) -> int:
        return int(self.call("cudaStreamCreate"))

    def synchronize(self, stream: int) -> None:
        self.call("cudaStreamSynchronize", stream)

    def htod_async(self, dst: int, src: np.ndarray, stream: int) -> None:
        kind = self.cudart.cudaMemcpyKind.cudaMemcpyHostToDevice
        self.call("cudaMemcpyAsync", dst, src.ctypes.data, src.nbytes, kind, stream)

    def dtoh_async(self, dst: np.ndarray, src: int, stream: int) -> None:
        kind = self.cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
        self.call("cudaMemcpyAsync", dst.ctypes.data, src, dst.nbytes, kind, stream)

    def htod(self, dst: int, src: np.ndarray) -> None:
        self.call("cudaMemcpy", dst, src.ctypes.data, src.nbytes, self.cudart.cudaMemcpyKind.cudaMemcpyHostToDevice)

    def begin_capture(self, stream: int) -> None:
        self.call("cudaStreamBeginCapture", stream, self.cudart.cudaStreamCaptureMode.cudaStreamCaptureModeGlobal)

    def end_capture(self, stream: int):
        """The captured graph, instantiated: ``(graph, executable graph)``."""
        graph = self.call("cudaStreamEndCapture", stream)
        return graph, self.call("cudaGraphInstantiate", graph, 0)

    def launch(self, graph_exec, stream: int) -> None:
        self.call("cudaGraphLaunch", graph_exec, stream)

    def destroy_graph(self, graph, graph_exec) -> None:
        self.call("cudaGraphExecDestroy", graph_exec)
        self.call("cudaGraphDestroy", graph)

    def destroy_stream(self, stream: int) -> None:
        self.call("cudaStreamDestroy", stream)

    def close(self) -> None:
        while self._pinned:
            self.call("cudaFreeHost", self._pinned.pop())


class PyCudaRuntime(CudaRuntime):
    """The same calls through pycuda (memory, streams) where it is installed; CUDA graphs go
    through cuda-python, which pycuda does not wrap."""

    library = "pycuda"

    def __init__(self) -> None:
        import pycuda.driver as cuda

        self.cuda = cuda
        self._pinned = []
        self._buffers: dict[int, object] = {}
        self._streams: dict[int, object] = {}
        self._cudart = None
        try:
            cuda.init()
            self.context = cuda.Device(0).retain_primary_context()
        except cuda.Error as exc:
            raise CudaError(f"pycuda could not open device 0: {exc}") from exc
        self.context.push()

    @property
    def cudart(self):  # only CUDA graphs need it
        if self._cudart is None:
            self._cudart = import_cudart()
        return self._cudart

    def identity(self) -> tuple[str, str]:
        dev = self.cuda.Device(0)
        major, minor = dev.compute_capability()
        return dev.name(), f"{major}.{minor}"

    def malloc(self, nbytes: int) -> int:
        buf = self.cuda.mem_alloc(max(nbytes, 1))
        self._buffers[int(buf)] = buf
        return int(buf)

    def free(self, ptr: int) -> None:
        self._buffers.pop(ptr).free()

    def pinned(self, shape: tuple, dtype) -> np.ndarray:
        return self.cuda.pagelocked_empty(shape, dtype)

    def stream(self) -> int:
        s = self.cuda.Stream()
        self._streams[int(s.handle)] = s
        return int(s.handle)

    def synchronize(self, stream: int) -> None:
        self._streams[stream].synchronize()

    def htod_async(self, dst: int, src: np.ndarray, stream: int) -> None:
        self.cuda.memcpy_htod_async(dst, src, self._streams[stream])

    def dtoh_async(self, dst: np.ndarray, src: int, stream: int) -> None:
        self.cuda.memcpy_dtoh_async(dst, src, self._streams[stream])

    def htod(self, dst: int, src: np.ndarray) -> None:
        self.cuda.memcpy_htod(dst, src)

    def destroy_stream(self, stream: int) -> None:
        self._streams.pop(stream, None)

    def close(self) -> None:
        for ptr in list(self._buffers):
            self.free(ptr)
        self.context.pop()
        self.context.detach()


def open_runtime() -> CudaRuntime:
    """pycuda where it is installed (as the design names it), else cuda-python. Raises
    ImportError when neither is, CudaError when no device answers."""
    try:
        import pycuda.driver  # noqa: F401
    except ImportError:
        return CudaRuntime()
    return PyCudaRuntime()
