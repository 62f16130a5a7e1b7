"""ONNX -> TensorRT plan (TensorRT 10 API): dynamic-batch profile, FP16/INT8, timing cache, sidecar.

Unverified on hardware in this repository's CI (no TensorRT there); written to the documented
TensorRT 10 Python API. Imports are lazy so the package works without TensorRT.
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


def gpu_identity() -> tuple[str, str]:
    try:
        import pycuda.driver as cuda
    except ImportError as exc:
        raise BackendUnavailable("pycuda is not installed (pip install -e .[tensorrt])") from exc
    try:
        cuda.init()
        dev = cuda.Device(0)
    except cuda.Error as exc:
        raise BackendUnavailable(f"no CUDA device: {exc}") from exc
    major, minor = dev.compute_capability()
    return dev.name(), f"{major}.{minor}"


def int8_route(meta_precision: str, quant_target: str | None, has_calibrator_api: bool) -> str:
    """Which INT8 route to take: "explicit" when the model folder already carries symmetric Q/DQ
    nodes (``quantize --target tensorrt``), else "implicit" (entropy calibrator) where the installed
    TensorRT still has it. Raises with the fix where neither works."""
    if meta_precision == "int8":
        if quant_target != "tensorrt":
            raise ValueError("this int8 model folder was quantised for ONNX Runtime (unsigned activations, which "
                             "TensorRT rejects); run quantize --target tensorrt on the fp32 folder and build from that")
        return "explicit"
    if not has_calibrator_api:
        raise ValueError("the installed TensorRT has no implicit INT8 calibration (removed in TensorRT 11); run "
                         "quantize --model MODEL --calib DIR --target tensorrt --out MODEL_INT8 and build from MODEL_INT8")
    return "implicit"


def build_engine(model: str | Path, out: str | Path, precision: str = "fp16", max_batch: int = 256,
                 opt_batch: int | None = None, calib_dir: str | Path | None = None,
                 timing_cache: str | Path | None = None, workspace_gib: float = 4.0) -> Path:
    if precision not in PRECISIONS:
        raise ValueError(f"--precision {precision!r}; valid: {PRECISIONS}")
    if max_batch < 1:
        raise ValueError(f"--max-batch must be >= 1, got {max_batch}")
    onnx_path, meta = model_paths(model)
    if meta.precision == "int8" and precision != "int8":
        raise ValueError(f"{model}: holds an int8 (Q/DQ) model; build it with --precision int8")
    if precision == "int8":  # fail on a wrongly quantised folder before touching the GPU
        int8_route(meta.precision, meta.extra.get("quantization_target"), True)
    trt = import_tensorrt()
    gpu_name, cc = gpu_identity()
    import pycuda.autoinit  # noqa: F401 - a context for the calibrator's buffers

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)  # explicit batch is the only mode in TensorRT 10
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(onnx_path.read_bytes()):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise RuntimeError(f"{onnx_path}: TensorRT could not parse the model: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gib * (1 << 30)))
    input_name = network.get_input(0).name
    chw = (meta.in_channels, meta.tile_size, meta.tile_size)
    profile = builder.create_optimization_profile()
    opt = opt_batch or max_batch
    profile.set_shape(input_name, (1, *chw), (opt, *chw), (max_batch, *chw))
    config.add_optimization_profile(profile)

    cache_file = Path(timing_cache) if timing_cache else Path(out).with_suffix(".timing.cache")
    cache = config.create_timing_cache(cache_file.read_bytes() if cache_file.is_file() else b"")
    config.set_timing_cache(cache, ignore_mismatch=False)

    int8_cache = ""
    route = ""
    if precision in ("fp16", "int8"):
        config.set_flag(trt.BuilderFlag.FP16)
        if pin_memory_layers_fp32(network, trt):
            config.set_flag(trt.BuilderFlag.PREFER_PRECISION_CONSTRAINTS)
    if precision == "int8":
        route = int8_route(meta.precision, meta.extra.get("quantization_target"), hasattr(config, "int8_calibrator"))
    if route == "explicit":  # scales come from the Q/DQ nodes; layers without them run in fp16
        config.set_flag(trt.BuilderFlag.INT8)
    elif route == "implicit":
        from calibration.int8 import cache_path, calibration_tiles, make_entropy_calibrator

        if calib_dir is None and not cache_path(Path(model).name).is_file():
            raise ValueError("--precision int8 needs --calib DIR of OK images (or an existing calibration cache)")
        config.set_flag(trt.BuilderFlag.INT8)
        tiles = calibration_tiles(calib_dir, meta) if calib_dir else None
        calib_batch = min(32, max_batch)
        cache = cache_path(Path(model).name)
        config.int8_calibrator = make_entropy_calibrator(tiles if tiles is not None else
                                                         __import__("numpy").zeros((0, *chw), "float32"),
                                                         calib_batch, cache)
        config.set_calibration_profile(profile)
        int8_cache = str(cache)

    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise RuntimeError(f"{onnx_path}: TensorRT engine build failed (see the log above)")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(bytes(plan))
    cache_file.write_bytes(bytes(config.get_timing_cache().serialize()))
    EngineMeta(trt.__version__, gpu_name, cc, precision, sha256_file(onnx_path), input_name, list(chw), 1,
               max_batch, str(Path(model).resolve()), int8_cache, route).save(out)
    if meta.coarse_map_weight > 0:  # the coarse-map network's engine; it has no Q/DQ nodes or calibration: fp16 for int8
        build_engine(Path(model) / COARSE_MAP_DIR, coarse_map_engine_path(out), "fp16" if precision == "int8" else precision,
                     max_batch, opt_batch, None, None, workspace_gib)
    return out
