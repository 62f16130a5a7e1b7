"""ONNX -> TensorRT plan (TensorRT 10 and 11): dynamic-batch profile, precision from the graph
(strongly typed; ``engines.tensorrt_api``), timing cache, sidecar.

Written to the documented TensorRT 10 and 11 Python APIs and tested against recorded descriptions
of both (``tests/test_tensorrt.py``); it has not been run against a real TensorRT here. Imports are
lazy so the package works without TensorRT.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path

from engines.artifact import COARSE_MAP_DIR, MEMORY_SCOPES, model_paths
from engines.backends.base import BackendUnavailable

PRECISIONS = ("fp32", "fp16", "int8")
# ONNX node-name scopes of the tile memories. Their distance |z|^2 - 2 z.b + |b|^2 cancels badly in
# fp16, so reduced-precision builds pin these layers to fp32, as the torch backend and quantize do.
FP32_SCOPES = MEMORY_SCOPES


def keeps_fp32(layer_name: str) -> bool:
    return layer_name.startswith(FP32_SCOPES)


def pin_memory_layers_fp32(network, trt) -> int:
    """Ask for fp32 on every tile-memory layer (with PREFER_PRECISION_CONSTRAINTS set); returns the count.
    A preference, not a guarantee: NVIDIA/TensorRT#3941 reports 10.0.1 ignoring such constraints, so a
    built engine is judged by the backend parity test, not by this call."""
    pinned = 0
    for i in range(network.num_layers):
        layer = network.get_layer(i)
        if not keeps_fp32(layer.name) or layer.type in (trt.LayerType.CONSTANT, trt.LayerType.SHAPE):
            continue
        layer.precision = trt.float32
        for j in range(layer.num_outputs):
            if layer.get_output(j).dtype in (trt.float32, trt.float16):
                layer.set_output_type(j, trt.float32)
        pinned += 1
    return pinned


@dataclass
class EngineMeta:
    tensorrt_version: str
    gpu_name: str
    compute_capability: str
    precision: str
    onnx_sha256: str
    input_name: str
    input_shape: list  # (C, T, T) per tile
    min_batch: int
    max_batch: int
    model_dir: str
    int8_calibration_cache: str = ""
    quantization: str = ""  # "explicit" (Q/DQ in the ONNX), "implicit" (calibrator) or "" (none)
    graph: str = ""  # the ONNX graph built: "fp32", "fp16" (converted for the build) or "qdq"
    strongly_typed: bool = False

    def save(self, engine_path: Path) -> Path:
        path = sidecar_path(engine_path)
        path.write_text(json.dumps(asdict(self), indent=2) + "\n")
        return path


def sidecar_path(engine_path: Path) -> Path:
    return Path(str(engine_path) + ".json")


def coarse_map_engine_path(engine_path: str | Path) -> Path:
    """Where the engine of a model's coarse-map network lies: beside the model's own engine
    (``model.engine`` -> ``model.coarse_map.engine``)."""
    engine_path = Path(engine_path)
    return engine_path.with_name(f"{engine_path.stem}.coarse_map{engine_path.suffix}")


def sha256_file(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def import_tensorrt():
    try:
        import tensorrt as trt
    except ImportError as exc:
        raise BackendUnavailable("TensorRT is not installed (pip install -e .[tensorrt] on a machine with an "
                                 "NVIDIA GPU and driver)") from exc
    return trt


def open_cuda():
    """The CUDA runtime wrapper (``engines.cuda_rt``), or BackendUnavailable saying why not."""
    from engines.cuda_rt import CudaError, open_runtime

    try:
        return open_runtime()
    except ImportError as exc:
        raise BackendUnavailable("neither cuda-python nor pycuda is installed (pip install -e .[tensorrt])") from exc
    except CudaError as exc:
        raise BackendUnavailable(f"no CUDA device: {exc}") from exc


def int8_route(meta_precision: str, quant_target: str | None, has_calibrator_api: bool) -> str:
    """Which INT8 route to take: "explicit" when the model folder already carries symmetric Q/DQ
    nodes (``quantize --target tensorrt``), else "implicit" (entropy calibrator) where the installed
    TensorRT still has it. Raises with the fix where neither works."""
    from engines.tensorrt_api import TrtApi, plan_build

    api = TrtApi("10.0", frozenset({"FP16", "INT8"} if has_calibrator_api else set()), frozenset(),
                 frozenset({"int8_calibrator", "set_calibration_profile"} if has_calibrator_api else set()))
    return plan_build(api, "int8", meta_precision, quant_target).route


def build_engine(model: str | Path, out: str | Path, precision: str = "fp16", max_batch: int = 256,
                 opt_batch: int | None = None, calib_tiles=None,
                 timing_cache: str | Path | None = None, workspace_gib: float = 4.0, trt=None, cuda=None) -> Path:
    """Build ``out`` (a serialised engine) and its ``.json`` sidecar from the model folder ``model``.
    ``trt`` (the TensorRT module) and ``cuda`` (a callable returning the CUDA runtime wrapper)
    default to the installed TensorRT and :func:`open_cuda`; tests pass stand-ins built from a
    recorded API description. ``calib_tiles``: normalised OK tiles for implicit INT8 calibration
    (``calibration.int8.calibration_tiles``), not needed once the engine's calibration cache exists."""
    import numpy as np

    from engines.tensorrt_api import TrtApi, network_creation_flags, plan_build

    if precision not in PRECISIONS:
        raise ValueError(f"--precision {precision!r}; valid: {PRECISIONS}")
    if max_batch < 1:
        raise ValueError(f"--max-batch must be >= 1, got {max_batch}")
    opt = opt_batch or max_batch
    if not 1 <= opt <= max_batch:
        raise ValueError(f"--opt-batch {opt}: give a batch between 1 and --max-batch ({max_batch})")
    onnx_path, meta = model_paths(model)
    quant_target = meta.extra.get("quantization_target")
    if meta.precision == "int8" and precision != "int8":
        raise ValueError(f"{model}: holds an int8 (Q/DQ) model; build it with --precision int8")
    if precision == "int8" and meta.precision == "int8":  # a wrongly quantised folder fails before the GPU
        int8_route(meta.precision, quant_target, True)
    trt = trt or import_tensorrt()
    api = TrtApi.of(trt)
    plan = plan_build(api, precision, meta.precision, quant_target)
    onnx_sha = sha256_file(onnx_path)
    out = Path(out)
    if plan.route == "implicit":
        from engines.int8_calibrator import int8_cache_path

        int8_cache = int8_cache_path(out, onnx_sha)
        if calib_tiles is None and not int8_cache.is_file():
            raise ValueError(f"--precision int8 needs --calib DIR of OK images (or the calibration cache {int8_cache})")
    rt = (cuda or open_cuda)()
    try:
        gpu_name, cc = rt.identity()
        logger = trt.Logger(trt.Logger.WARNING)
        builder = trt.Builder(logger)
        network = builder.create_network(network_creation_flags(api, plan, trt))
        parser = trt.OnnxParser(network, logger)
        if plan.graph == "fp16":
            from engines.fp16_onnx import fp16_model_bytes

            graph = fp16_model_bytes(onnx_path)
        else:
            graph = onnx_path.read_bytes()
        if not parser.parse(graph):
            errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
            raise RuntimeError(f"{onnx_path}: TensorRT could not parse the model ({plan.graph} graph): {errors}")
        config = builder.create_builder_config()
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gib * (1 << 30)))
        input_name = network.get_input(0).name
        chw = (meta.in_channels, meta.tile_size, meta.tile_size)
        profile = builder.create_optimization_profile()
        profile.set_shape(input_name, (1, *chw), (opt, *chw), (max_batch, *chw))
        config.add_optimization_profile(profile)

        cache_file = Path(timing_cache) if timing_cache else out.with_suffix(".timing.cache")
        cache = config.create_timing_cache(cache_file.read_bytes() if cache_file.is_file() else b"")
        config.set_timing_cache(cache, ignore_mismatch=False)
        for flag in plan.builder_flags:
            config.set_flag(getattr(trt.BuilderFlag, flag))
        if plan.pin_memory_fp32:
            pin_memory_layers_fp32(network, trt)
        int8_cache_name = ""
        if plan.route == "implicit":
            from engines.int8_calibrator import make_entropy_calibrator

            # calibration runs at the calibration profile's opt shape: the calibrator's own batch
            calib_batch = min(32, max_batch)
            calib_profile = builder.create_optimization_profile()
            calib_profile.set_shape(input_name, *[(calib_batch, *chw)] * 3)
            tiles = calib_tiles if calib_tiles is not None else np.zeros((0, *chw), np.float32)
            config.int8_calibrator = make_entropy_calibrator(tiles, calib_batch, int8_cache, rt, trt)
            config.set_calibration_profile(calib_profile)
            int8_cache_name = str(int8_cache)
        plan_bytes = builder.build_serialized_network(network, config)
        if plan_bytes is None:
            raise RuntimeError(f"{onnx_path}: TensorRT engine build failed (see the log above)")
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_bytes(bytes(plan_bytes))
        cache_file.write_bytes(bytes(config.get_timing_cache().serialize()))
        EngineMeta(trt.__version__, gpu_name, cc, precision, onnx_sha, input_name, list(chw), 1, max_batch,
                   str(Path(model).resolve()), int8_cache_name, plan.route, plan.graph,
                   plan.strongly_typed).save(out)
    finally:
        rt.close()
    if meta.coarse_map_weight > 0:  # the coarse-map network's engine; it has no Q/DQ nodes or calibration: fp16 for int8
        build_engine(Path(model) / COARSE_MAP_DIR, coarse_map_engine_path(out), "fp16" if precision == "int8" else precision,
                     max_batch, opt_batch, None, None, workspace_gib, trt=trt, cuda=cuda)
    return out
