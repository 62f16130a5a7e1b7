"""ONNX Runtime INT8 static quantisation (QDQ), calibrated on OK tiles, for CPU inference.

Two targets:

- ``onnxruntime`` (default): activations unsigned 8-bit, weights per channel signed 8-bit, the
  combination ONNX Runtime's x86 kernels (VNNI/AVX2 u8s8) run fastest.
- ``tensorrt``: symmetric signed 8-bit activations and weights (zero point 0), the only Q/DQ form
  TensorRT accepts. ``build_engine --precision int8`` on such a folder builds an explicitly
  quantised engine without a calibrator, the route TensorRT prefers since 10.1 (its implicit
  calibrators are deprecated there and removed in 11).

The output model folder keeps the same layout and sidecar, with ``precision: int8``.
"""
from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np

from calibration.int8 import calibration_batches, calibration_tiles
from engines.artifact import COARSE_MAP_DIR, ONNX_NAME, model_paths

QUANT_TARGETS = ("onnxruntime", "tensorrt")


# Where a walk back from the outputs stops: the last convolution of the map (kept in float) and the
# pooling that starts the tile embedding.
_HEAD_STOP_OPS = {"Conv", "GlobalAveragePool", "GlobalMaxPool", "MaxPool"}


def output_head_nodes(onnx_path: Path) -> list[str]:
    """Names of the nodes between the graph outputs and the last convolution or pooling on each
    path (those included). They stay in float: the defect map's useful range includes small
    probabilities that an 8-bit output (steps of 1/255) would flatten to zero, and the tile memory's
    distances (MatMul, ReduceMin, Sqrt) would lose the small differences that rank tiles. Both cost
    almost no time in float."""
    import onnx

    graph = onnx.load(str(onnx_path)).graph
    producer = {out: node for node in graph.node for out in node.output}
    names: list[str] = []
    seen: set[str] = set()
    frontier = [o.name for o in graph.output]
    while frontier:
        node = producer.get(frontier.pop())
        if node is None or node.name in seen:
            continue
        seen.add(node.name)
        names.append(node.name)
        if node.op_type not in _HEAD_STOP_OPS:
            frontier += list(node.input)
    return names


def quantize_model(model: str | Path, calib: str | Path, out: str | Path, max_tiles: int = 256,
                   batch: int = 16, method: str = "minmax", target: str = "onnxruntime") -> Path:
    from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType,
                                          quant_pre_process, quantize_static)

    onnx_path, meta = model_paths(model)
    if meta.precision != "fp32":
        raise ValueError(f"{model}: already {meta.precision}; quantise the fp32 model folder")
    methods = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
               "percentile": CalibrationMethod.Percentile}
    if method not in methods:
        raise ValueError(f"--method {method!r}; valid: {sorted(methods)}")
    if target not in QUANT_TARGETS:
        raise ValueError(f"--target {target!r}; valid: {QUANT_TARGETS}")
    symmetric = target == "tensorrt"
    tiles = calibration_tiles(calib, meta, max_tiles)

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.it = iter(calibration_batches(tiles, batch))

        def get_next(self):
            nxt = next(self.it, None)
            return None if nxt is None else {"tiles": nxt}

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    prepped = out / "model.prep.onnx"
    quant_pre_process(str(onnx_path), str(prepped), skip_symbolic_shape=True)
    quantize_static(str(prepped), str(out / ONNX_NAME), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QInt8 if symmetric else QuantType.QUInt8,
                    weight_type=QuantType.QInt8, calibrate_method=methods[method],
                    nodes_to_exclude=output_head_nodes(prepped),
                    extra_options={"ActivationSymmetric": symmetric, "WeightSymmetric": True})
    prepped.unlink()
    weights = Path(model) / "model.pt"
    if weights.is_file():  # the torch backend keeps serving the fp32 reference
        shutil.copy(weights, out / "model.pt")
    if (Path(model) / COARSE_MAP_DIR).is_dir():  # the coarse-map network is copied as it is, fp32 (coarse tiles only)
        shutil.copytree(Path(model) / COARSE_MAP_DIR, out / COARSE_MAP_DIR, dirs_exist_ok=True)
    extra = {**meta.extra, "quantized_from": str(Path(model)), "calibration_tiles": int(len(tiles)),
             "calibration_method": method, "quantization_target": target}
    replace(meta, precision="int8", extra=extra).save(out)
    return out


def compare_maps(fp32_maps: np.ndarray, int8_maps: np.ndarray) -> float:
    return float(np.abs(fp32_maps - int8_maps).max())
