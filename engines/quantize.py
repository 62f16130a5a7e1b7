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

from engines.artifact import COARSE_MAP_DIR, ONNX_NAME, ModelMeta, model_paths
from engines.int8_calibrator import calibration_batches

QUANT_TARGETS = ("onnxruntime", "tensorrt")


# Where a walk back from the outputs stops: the last convolution of the map (kept in float) and the
# pooling that starts the tile embedding.
_HEAD_STOP_OPS = {"Conv", "GlobalAveragePool", "GlobalMaxPool", "MaxPool"}


# The network's first block (Tiny-UNet's ``inc``) stays in float too. Its convolutions are a
# high-gain texture detector (BatchNorm gains up to 16 over outputs with a standard deviation of
# 0.07), so 8-bit steps of the input and of its outputs move the map far more than anywhere else:
# on the shipped model and the uneven-band image, the INT8 map's largest difference from fp32 went
# from 0.51 to 0.17 with it kept in float (benchmark --model INT8_FOLDER reports it: int8_vs_fp32).
INPUT_BLOCK_SCOPE = "/inc/"


def _graph(model):
    """The graph of an ONNX model, given loaded or as a path."""
    import onnx

    return (model if isinstance(model, onnx.ModelProto) else onnx.load(str(model))).graph


def float_nodes(model, input_block_float: bool = True) -> list[str]:
    """The nodes quantisation leaves in float (``model``: an ONNX model or its path): the output
    head and (unless ``input_block_float`` is False, which trades map fidelity for speed) the input
    block."""
    graph = _graph(model)
    head = output_head_nodes(graph)
    if not input_block_float:
        return head
    return head + [n.name for n in graph.node if n.name.startswith(INPUT_BLOCK_SCOPE)]


def output_head_nodes(model) -> list[str]:
    """Names of the nodes between the graph outputs and the last convolution or pooling on each
    path (those included). They stay in float: the defect map's useful range includes small
    probabilities that an 8-bit output (steps of 1/255) would flatten to zero, and the tile memory's
    distances (MatMul, ReduceMin, Sqrt) would lose the small differences that rank tiles. Both cost
    almost no time in float. ``model``: an ONNX model, its graph, or its path."""
    graph = model if hasattr(model, "node") and hasattr(model, "output") else _graph(model)
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


def quantizable(model: str | Path, method: str = "minmax", target: str = "onnxruntime") -> ModelMeta:
    """The sidecar of an fp32 model folder that can be quantised with ``method`` for ``target``;
    otherwise an error naming the fix."""
    _, meta = model_paths(model)
    if meta.precision != "fp32":
        raise ValueError(f"{model}: already {meta.precision}; quantise the fp32 model folder")
    if method not in CALIBRATION_METHODS:
        raise ValueError(f"--method {method!r}; valid: {list(CALIBRATION_METHODS)}")
    if target not in QUANT_TARGETS:
        raise ValueError(f"--target {target!r}; valid: {QUANT_TARGETS}")
    return meta


CALIBRATION_METHODS = ("minmax", "entropy", "percentile")


def quantize_model(model: str | Path, tiles: np.ndarray, out: str | Path, batch: int = 16, method: str = "minmax",
                   target: str = "onnxruntime", input_block_float: bool = True,
                   provenance: dict | None = None) -> Path:
    """Write the int8 folder ``out`` of the fp32 folder ``model``, calibrated on ``tiles``
    (normalised ``(N, C, T, T)`` float32, ``calibration.int8.calibration_tiles``).
    ``input_block_float=False`` puts the first block in 8 bits too: faster, and the map moves
    further from fp32. ``provenance``: more sidecar entries saying where the tiles came from."""
    from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType,
                                          quant_pre_process, quantize_static)

    meta = quantizable(model, method, target)
    onnx_path, _ = model_paths(model)
    methods = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
               "percentile": CalibrationMethod.Percentile}
    symmetric = target == "tensorrt"

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
                    nodes_to_exclude=float_nodes(prepped, input_block_float),
                    extra_options={"ActivationSymmetric": symmetric, "WeightSymmetric": True})
    prepped.unlink()
    weights = Path(model) / "model.pt"
    if weights.is_file():  # the torch backend keeps serving the fp32 reference
        shutil.copy(weights, out / "model.pt")
    if (Path(model) / COARSE_MAP_DIR).is_dir():  # the coarse-map network is copied as it is, fp32 (coarse tiles only)
        shutil.copytree(Path(model) / COARSE_MAP_DIR, out / COARSE_MAP_DIR, dirs_exist_ok=True)
    extra = {**meta.extra, "quantized_from": str(Path(model)), "calibration_tiles": int(len(tiles)),
             "calibration_method": method, "quantization_target": target,
             "input_block_float": bool(input_block_float), **(provenance or {})}
    replace(meta, precision="int8", extra=extra).save(out)
    return out


def compare_maps(fp32_maps: np.ndarray, int8_maps: np.ndarray) -> float:
    return float(np.abs(fp32_maps - int8_maps).max())


# Real images in the repository that INT8 is checked on: a straight-edged uneven band (where an
# 8-bit first block moved the map most) and the mini split's test images.
CHECK_IMAGES = ("tests/data/uneven_band", "tests/data/magnetic_tile_mini/test")


def check_images(root: Path | None = None) -> list[Path]:
    from engines.data import list_images

    root = root or Path(__file__).resolve().parents[1]
    files: list[Path] = []
    for sub in CHECK_IMAGES:
        folder = root / sub
        if folder.is_dir():
            files += list_images(folder) + [f for d in sorted(folder.iterdir()) if d.is_dir() for f in list_images(d)]
    return [f for f in files if not f.stem.endswith("_mask")]  # ground-truth masks beside the images


def int8_vs_fp32(fp32_model: str | Path, int8_model: str | Path, images: list[Path]) -> dict:
    """Per image and overall: the largest map difference, the share of pixels off by more than
    0.1, the share on the other side of the pixel threshold, and the image-score difference."""
    from engines.backends import load_backend
    from engines.data import read_image
    from engines.detector import Detector

    ref, q = Detector(load_backend("onnxruntime", fp32_model)), Detector(load_backend("onnxruntime", int8_model))
    thr = ref.meta.pixel_threshold
    rows = []
    for f in images:
        img = read_image(f, ref.meta.in_channels)
        a, b = ref.predict(img), q.predict(img)
        d = np.abs(a.anomaly_map - b.anomaly_map)
        rows.append({"image": str(f), "map_max_diff": round(float(d.max()), 4),
                     "pixels_off_by_0.1": round(float((d > 0.1).mean()), 5),
                     "pixels_flipped": round(float(np.mean((a.anomaly_map >= thr) != (b.anomaly_map >= thr))), 5),
                     "score_diff": round(abs(a.score - b.score), 4)})
    worst = {k: max(r[k] for r in rows) for k in ("map_max_diff", "pixels_off_by_0.1", "pixels_flipped", "score_diff")}
    return {"fp32_model": str(fp32_model), "int8_model": str(int8_model), "images": len(rows), "worst": worst,
            "per_image": rows}
