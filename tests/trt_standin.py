"""Stand-ins for ``tensorrt`` and the CUDA runtime, made from a recorded description of one
TensorRT version's API (``tests/data/tensorrt_api/*.json``). An attribute the recording does not
list raises AttributeError, as the real module would; the engine "runs" the parsed ONNX graph with
ONNX Runtime on the stand-in device's buffers, so the backend's bindings, copies and batching are
checked against real outputs."""
from __future__ import annotations

import types

import numpy as np

from engines.tensorrt_api import TrtApi


class _Enum:
    def __init__(self, names) -> None:
        for i, n in enumerate(sorted(names)):
            setattr(self, n, i)

    def __dir__(self):
        return [n for n in vars(self)]


class FakeCuda:
    """Device memory as numpy buffers keyed by integer "pointers"."""

    library = "stand-in"

    def __init__(self, fail_capture: bool = False) -> None:
        self.mem: dict[int, np.ndarray] = {}
        self.next = 4096
        self.closed = False
        self.fail_capture = fail_capture
        self.freed: list[int] = []

    def identity(self):
        return "Stand-in GPU", "9.0"

    def malloc(self, nbytes: int) -> int:
        ptr, self.next = self.next, self.next + nbytes + 256
        self.mem[ptr] = np.zeros(nbytes, np.uint8)
        return ptr

    def free(self, ptr: int) -> None:
        del self.mem[ptr]
        self.freed.append(ptr)

    def pinned(self, shape, dtype):
        return np.zeros(shape, dtype)

    def stream(self) -> int:
        return 1

    def synchronize(self, stream: int) -> None:
        pass

    def htod_async(self, dst: int, src: np.ndarray, stream: int) -> None:
        self.mem[dst][: src.nbytes] = np.frombuffer(np.ascontiguousarray(src).tobytes(), np.uint8)

    def htod(self, dst: int, src: np.ndarray) -> None:
        self.htod_async(dst, src, 0)

    def dtoh_async(self, dst: np.ndarray, src: int, stream: int) -> None:
        dst.reshape(-1).view(np.uint8)[:] = self.mem[src][: dst.nbytes]

    def begin_capture(self, stream: int) -> None:
        pass

    def end_capture(self, stream: int):
        from engines.cuda_rt import CudaError

        if self.fail_capture:
            raise CudaError("cudaStreamEndCapture failed: cudaErrorStreamCaptureInvalidated")
        return "graph", "graph_exec"

    def launch(self, graph_exec, stream: int) -> None:
        self.context.execute_async_v3(stream)

    def destroy_graph(self, graph, graph_exec) -> None:
        pass

    def destroy_stream(self, stream: int) -> None:
        pass

    def close(self) -> None:
        self.closed = True


def make_tensorrt(api: TrtApi, cuda: FakeCuda | None = None):
    """A module object that answers like ``tensorrt`` of ``api.version``; ``trt.built`` records
    what a build asked for."""
    import onnx
    import onnxruntime as ort

    trt = types.ModuleType("tensorrt")
    trt.__version__ = api.version
    trt.BuilderFlag = _Enum(api.builder_flags)
    trt.NetworkDefinitionCreationFlag = _Enum(api.network_flags)
    trt.MemoryPoolType = _Enum(["WORKSPACE"])
    trt.TensorIOMode = _Enum(["INPUT", "OUTPUT"])
    trt.LayerType = _Enum(["CONSTANT", "SHAPE", "CONVOLUTION"])
    trt.float32, trt.float16 = "float32", "float16"
    trt.built = {}

    class Logger:
        WARNING = 2

        def __init__(self, level) -> None:
            self.level = level

    class IBuilderConfig:
        pass

    for name in api.config_attributes:
        setattr(IBuilderConfig, name, None)

    class Config:
        def __init__(self) -> None:
            object.__setattr__(self, "flags", [])
            object.__setattr__(self, "values", {})

        def __getattr__(self, name):
            if name not in api.config_attributes:
                raise AttributeError(f"'tensorrt.IBuilderConfig' object has no attribute '{name}'")
            return self.values.get(name)

        def __setattr__(self, name, value):
            if name not in api.config_attributes:
                raise AttributeError(f"'tensorrt.IBuilderConfig' object has no attribute '{name}'")
            self.values[name] = value

        def set_flag(self, flag):
            self.flags.append(flag)

        def set_memory_pool_limit(self, pool, size):
            self.values["workspace"] = size

        def add_optimization_profile(self, profile):
            self.values.setdefault("profiles", []).append(profile)

        def create_timing_cache(self, data):
            return types.SimpleNamespace(serialize=lambda: b"timing")

        def set_timing_cache(self, cache, ignore_mismatch):
            self.values["timing_cache"] = cache

        def get_timing_cache(self):
            return self.values["timing_cache"]

        def set_calibration_profile(self, profile):
            if "set_calibration_profile" not in api.config_attributes:
                raise AttributeError("'tensorrt.IBuilderConfig' object has no attribute 'set_calibration_profile'")
            self.values["calibration_profile"] = profile

    class Profile:
        def __init__(self) -> None:
            self.shapes = {}

        def set_shape(self, name, lo, opt, hi):
            self.shapes[name] = (tuple(lo), tuple(opt), tuple(hi))

    class Network:
        def __init__(self, flags) -> None:
            self.flags = flags
            self.num_layers = 0
            self.graph = None

        def get_input(self, i):
            return types.SimpleNamespace(name=self.graph.graph.input[i].name)

    class Builder:
        def __init__(self, logger) -> None:
            pass

        def create_network(self, flags=0):
            return Network(flags)

        def create_builder_config(self):
            return Config()

        def create_optimization_profile(self):
            return Profile()

        def build_serialized_network(self, network, config):
            trt.built = {"network_flags": network.flags, "flags": list(config.flags), "config": config.values,
                         "graph": network.graph}
            return network.graph.SerializeToString()  # the "plan" is the graph, run by Engine below

    class OnnxParser:
        def __init__(self, network, logger) -> None:
            self.network = network
            self.num_errors = 0

        def parse(self, data: bytes) -> bool:
            self.network.graph = onnx.load_from_string(data)
            return True

    class Engine:
        def __init__(self, plan: bytes) -> None:
            self.net = ort.InferenceSession(plan, providers=["CPUExecutionProvider"])
            self.inputs = [i.name for i in self.net.get_inputs()]
            self.outputs = [o for o in self.net.get_outputs()]
            self.num_io_tensors = len(self.inputs) + len(self.outputs)

        def get_tensor_name(self, i):
            return (self.inputs + [o.name for o in self.outputs])[i]

        def get_tensor_mode(self, name):
            return trt.TensorIOMode.INPUT if name in self.inputs else trt.TensorIOMode.OUTPUT

        def get_tensor_shape(self, name):
            io = [*self.net.get_inputs(), *self.outputs]
            return [-1] + [int(d) for d in next(t for t in io if t.name == name).shape[1:]]

        def get_tensor_dtype(self, name):
            return "float32"

        def create_execution_context(self):
            context = Context(self)
            if cuda is not None:
                cuda.context = context
            return context

    class Context:
        def __init__(self, engine) -> None:
            self.engine = engine
            self.addresses = {}
            self.batch = 0

        def set_tensor_address(self, name, ptr):
            self.addresses[name] = ptr
            return True

        def set_input_shape(self, name, shape):
            self.batch = shape[0]
            return True

        def execute_async_v3(self, stream):
            e, n = self.engine, self.batch
            name = e.inputs[0]
            x = cuda.mem[self.addresses[name]].view(np.float32)[: n * 128 * 128].reshape(n, 1, 128, 128)
            outs = e.net.run(None, {name: x})
            for o, value in zip(e.outputs, outs):
                buf = cuda.mem[self.addresses[o.name]]
                raw = np.ascontiguousarray(value, np.float32).view(np.uint8).reshape(-1)
                buf[: raw.size] = raw
            return True

    class Runtime:
        def __init__(self, logger) -> None:
            pass

        def deserialize_cuda_engine(self, plan: bytes):
            return Engine(plan)

    trt.Logger, trt.Builder, trt.OnnxParser, trt.Runtime, trt.IBuilderConfig = Logger, Builder, OnnxParser, Runtime, \
        IBuilderConfig
    trt.nptype = lambda dtype: np.dtype(dtype).type
    if api.implicit_int8:
        class IInt8EntropyCalibrator2:
            def __init__(self) -> None:
                pass

        trt.IInt8EntropyCalibrator2 = IInt8EntropyCalibrator2
    return trt
