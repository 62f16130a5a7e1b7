"""Export a training checkpoint to a model folder: ONNX (opset >= 17, dynamic batch), the torch
state dict, and the metadata sidecar. The export checks itself against PyTorch numerically."""
from __future__ import annotations

import shutil
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from engines.artifact import (ALL_MEMORY_NAMES, COARSE_MAP_DIR, MAP_BLUR_SIGMA, MEMORY_SCOPES, META_NAME, ONNX_NAME,
                              POSITION_MEMORY_NAME, ModelMeta, map_blur_sigma_problem, model_paths)
from engines.tile_memory import COARSE_SCALE, GRAPH_MAP_SHARE, MEMORY_NAMES, NOVELTY_RULE_FIELDS, novelty_rule
from engines.backends.torch_backend import WEIGHTS_NAME
from engines.inference_model import build_model, inference_module, load_weights

# Weight of the coarse-map network's map added to the fine map (ModelMeta.coarse_map_weight). Fixed
# at 0.25 before the width-8 networks were trained (on a width-16 half-scale network's map); at it, three width-8 seeds each raised both pixel AUROC and AUPRO on the
# magnetic-tile split (research/results/coarse_scale_map.txt).
COARSE_NET_MAP_WEIGHT = 0.25

# Operators TensorRT parses natively; a graph outside this set fails `build_engine` later.
TENSORRT_NATIVE_OPS = {
    "Conv", "BatchNormalization", "Relu", "LeakyRelu", "MaxPool", "Resize", "Concat", "Sigmoid",
    "GlobalAveragePool", "GlobalMaxPool", "AveragePool", "Gemm", "MatMul", "Add", "Sub", "Mul", "Div",
    "Flatten", "Reshape", "Gather", "Squeeze", "Unsqueeze", "Pad", "Clip", "ReduceMax", "ReduceMean",
    "Constant", "Shape", "Identity", "Slice", "ReduceMin", "ReduceSum", "Sqrt", "Transpose", "Cast",
}
PARITY_TOLERANCE = 1e-3


# Architectures that are served on GPUs and so must stay within TENSORRT_NATIVE_OPS.
TENSORRT_ARCHS = ("tiny_unet",)


class ExportError(RuntimeError):
    pass


def read_checkpoint(path: str | Path) -> dict:
    """A run's ``last.pt`` as train wrote it."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: checkpoint not found (train writes OUT/last.pt)")
    return torch.load(path, map_location="cpu", weights_only=True)


def load_checkpoint(path: str | Path | list[str | Path]) -> tuple[torch.nn.Module, dict]:
    """The network of a run's ``last.pt``, or of several runs' averaged (:func:`average_checkpoints`)."""
    paths = list(path) if isinstance(path, (list, tuple)) else [path]
    state = average_checkpoints(paths) if len(paths) > 1 else read_checkpoint(paths[0])
    cfg = state["config"]
    model = load_weights(build_model(cfg["arch"], cfg["channels"], cfg["width"]), state["model"], str(paths[0]))
    return model.eval(), state


def average_checkpoints(paths: list[str | Path]) -> dict:
    """A checkpoint-like state whose network is the weight-by-weight mean of several runs' networks.
    Only fine-tunes of one network average into a network that works (say, seeds of a
    ``--freeze-encoder`` run): the runs must share the architecture, width, channels, training data
    and starting weights (``train --init``), else this refuses naming the file. Integer buffers
    come from the first run; tile memories are left out (``--memory-data`` fits new ones)."""
    paths = [Path(p) for p in paths]
    states = [read_checkpoint(p) for p in paths]
    first = states[0]["config"]
    if not first.get("init"):
        raise ValueError(f"{paths[0]}: not a fine-tune (trained without --init); only runs that start from the same "
                         "weights average into one network")
    for path, state in zip(paths[1:], states[1:]):
        for key in ("arch", "width", "channels", "init", "init_command"):
            if state["config"].get(key) != first.get(key):
                raise ValueError(f"{path}: its {key} differs from {paths[0]}'s ({state['config'].get(key)!r} against "
                                 f"{first.get(key)!r}); only runs that start from the same weights average into one network")
        if state.get("training_data_hash") != states[0].get("training_data_hash"):
            raise ValueError(f"{path}: trained on other images than {paths[0]} (training data hash); average runs on the same data")
    weights = {}
    for key, value in states[0]["model"].items():
        if key.split(".", 1)[0] in ALL_MEMORY_NAMES:
            continue
        weights[key] = (torch.stack([s["model"][key] for s in states]).mean(0) if value.is_floating_point() else value)
    commands = " | ".join(s["config"].get("command", "") for s in states)
    return {"model": weights, "config": {**first, "command": f"average of {len(paths)} runs: {commands}"},
            "step": max(int(s["step"]) for s in states), "training_data_hash": states[0].get("training_data_hash", "")}


def load_model_folder(folder: str | Path) -> tuple[torch.nn.Module, dict]:
    """The network (with its memories) of an exported model folder, and a checkpoint-like state
    (``config``, ``step``, ``training_data_hash``, and the sidecar itself as ``meta``), so that
    :func:`export_model` can re-export it, e.g. with memories refitted, when its training checkpoint
    is gone."""
    _, meta = model_paths(folder)
    weights = Path(folder) / WEIGHTS_NAME
    if not weights.is_file():
        raise FileNotFoundError(f"{weights}: missing; re-exporting a model folder needs the state dict export_model writes")
    model = load_weights(build_model(meta.arch, meta.in_channels, meta.width),
                         torch.load(weights, map_location="cpu", weights_only=True), str(weights))
    cfg = {"arch": meta.arch, "width": meta.width, "channels": meta.in_channels, "command": meta.training_command,
           "init_command": meta.extra.get("init_training_command", "")}
    return model.eval(), {"config": cfg, "step": meta.extra.get("train_steps", 0),
                          "training_data_hash": meta.training_data_hash, "meta": meta}


def export_onnx(module: torch.nn.Module, in_channels: int, out_path: Path, opset: int = 17, tile: int = 128) -> Path:
    dummy = torch.zeros(2, in_channels, tile, tile)
    torch.onnx.export(
        module, (dummy,), str(out_path), input_names=["tiles"], output_names=["map", "score"],
        dynamic_axes={"tiles": {0: "batch"}, "map": {0: "batch"}, "score": {0: "batch"}},
        opset_version=opset, do_constant_folding=True, dynamo=False,
    )
    return out_path


def store_exact_fp16_constants(onnx_path: Path, scopes: tuple[str, ...] = MEMORY_SCOPES,
                               min_bytes: int = 1 << 12) -> int:
    """Rewrite the large float constants that only nodes of ``scopes`` read, and that fp16 holds
    exactly, as fp16 initializers behind a Cast back to float; returns the bytes saved. The tile
    memories' banks are rounded to fp16 when fitted (``fit_memory``), so the graph computes the
    same numbers from half the bytes (about 3 MB of the shipped folder's banks)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    model = onnx.load(str(onnx_path))
    graph = model.graph
    readers: dict[str, list] = {}
    for node in graph.node:
        for name in node.input:
            readers.setdefault(name, []).append(node)
    graph_inputs = {i.name for i in graph.input}  # an initializer listed as an input stays as it is
    casts, saved = [], 0
    for init in graph.initializer:
        nodes = readers.get(init.name, [])
        if (init.data_type != TensorProto.FLOAT or init.name in graph_inputs or not nodes
                or not all(n.name.startswith(scopes) for n in nodes)):
            continue
        value = numpy_helper.to_array(init)
        if value.nbytes < min_bytes:
            continue
        half = value.astype(np.float16)
        if not np.array_equal(half.astype(np.float32), value):
            continue
        name, scope = init.name, "/" + nodes[0].name.split("/")[1] + "/"
        init.CopyFrom(numpy_helper.from_array(half, f"{name}_fp16"))
        casts.append(helper.make_node("Cast", [f"{name}_fp16"], [name], to=TensorProto.FLOAT, name=f"{scope}Cast_fp16_{len(casts)}"))
        saved += value.nbytes - half.nbytes
    if casts:  # the Casts read only initializers, so they go first in topological order
        nodes = casts + list(graph.node)
        del graph.node[:]
        graph.node.extend(nodes)
        onnx.save(model, str(onnx_path))
    return saved


def onnx_operators(onnx_path: Path) -> set[str]:
    import onnx

    return {node.op_type for node in onnx.load(str(onnx_path)).graph.node}


def check_forward(module: torch.nn.Module, onnx_path: Path, in_channels: int, tile: int = 128,
                  batch: int = 3, seed: int = 0) -> float:
    """Max abs difference of ONNX Runtime vs PyTorch maps on random input; raises above tolerance."""
    import onnxruntime as ort

    x = np.random.default_rng(seed).normal(0, 1, (batch, in_channels, tile, tile)).astype(np.float32)
    with torch.no_grad():
        ref_map, ref_score = (t.numpy() for t in module(torch.from_numpy(x)))
    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    got_map, got_score = sess.run(None, {"tiles": x})
    diff = float(max(np.abs(got_map - ref_map).max(), np.abs(got_score - ref_score).max()))
    if diff > PARITY_TOLERANCE:
        raise ExportError(f"{onnx_path}: ONNX Runtime differs from PyTorch by {diff:.2e} (> {PARITY_TOLERANCE})")
    return diff


def compact_state(model: torch.nn.Module) -> dict:
    """State dict with the tile-memory banks stored in fp16 (half the bytes; ``load_state_dict``
    copies it back into the model's fp32 buffer, and distances move by < 1e-3)."""
    state = model.state_dict()
    for key in [f"{name}.bank" for name in MEMORY_NAMES] + [f"{POSITION_MEMORY_NAME}.{b}" for b in ("fine_extra", "coarse_extra")]:
        if key in state:
            state[key] = state[key].half()
    return state


def export_model(source: str | Path | list[str | Path], out: str | Path, opset: int = 17,
                 thresholds: tuple[float, float] | None = None, progress: bool = True,
                 coarse_map: str | Path | None = None, coarse_map_weight: float = COARSE_NET_MAP_WEIGHT,
                 memories: Callable[[torch.nn.Module, dict], tuple[dict, dict]] | None = None) -> Path:
    """Write ``out/model.onnx``, ``out/model.pt`` and ``out/model.json``; return ``out``.

    ``source`` is a training checkpoint (``train``'s ``last.pt``), several (their weights
    averaged), or an exported model folder; a folder keeps its thresholds, its coarse-map network
    and that network's weight (unless ``coarse_map`` gives another), and its memories unless
    ``memories`` refits them: ``memories(model, config)`` fits the model's tile memories and returns
    what the sidecar records of them and a line's grids (``calibration.memories.fit_memories``, which
    ``calibration.memories.export_model`` passes). ``coarse_map``: a run's checkpoint to add as the
    coarse-map network (:func:`add_coarse_map_net`)."""
    folder = not isinstance(source, (list, tuple)) and Path(source).is_dir()
    model, state = load_model_folder(source) if folder else load_checkpoint(source)
    source_meta: ModelMeta | None = state.get("meta")  # a model folder's sidecar; None for a checkpoint
    extra = {"train_steps": int(state["step"])}
    cfg = state["config"]
    if cfg.get("init_command"):  # a fine-tune: how the weights it started from were trained
        extra["init_training_command"] = cfg["init_command"]
    line_grids: dict = {}
    if memories is not None:
        memory_extra, line_grids = memories(model, cfg)
        extra.update(memory_extra)
    elif source_meta is not None:  # memories as they were: so is their provenance
        extra.update({k: v for k, v in source_meta.extra.items() if k.startswith("memory_")})
        if getattr(model, "position_memory", None) is not None:
            line_grids = source_meta.line_grids
    for name in MEMORY_NAMES:
        memory = getattr(model, name, None)
        if memory is not None:
            extra.update({f"{name}_tiles": int(memory.bank.shape[0]), f"{name}_center": round(float(memory.center), 4),
                          f"{name}_scale": round(float(memory.scale), 4)})
    if getattr(model, "memory", None) is not None:
        # The share of novelty goes outside the graph (ModelMeta.fine_map_share), also for
        # checkpoints whose memory still carries the old in-graph share.
        model.memory.map_share.fill_(GRAPH_MAP_SHARE)
        extra["memory_map_share"] = GRAPH_MAP_SHARE
    with tempfile.TemporaryDirectory() as keep:
        kept_net = None
        if source_meta is not None:
            thresholds = thresholds or (source_meta.pixel_threshold, source_meta.image_threshold)
            if coarse_map is None and (Path(source) / COARSE_MAP_DIR).is_dir():
                # Copied aside first: export_module clears OUT's coarse_map/, and OUT may be the source.
                kept_net = shutil.copytree(Path(source) / COARSE_MAP_DIR, Path(keep) / COARSE_MAP_DIR)
        out = export_module(model, cfg, out, opset, thresholds, data_hash=state.get("training_data_hash", ""), extra=extra,
                            line_grids=line_grids)
        if source_meta is not None:  # the folder's own image-score rule and coarse-map network stay
            meta_out = replace(ModelMeta.load(out), fine_top_k=source_meta.fine_top_k,
                               map_blur_sigma=source_meta.map_blur_sigma)
            if source_meta.fine_map_share or source_meta.coarse_map_share or source_meta.both_scales_map_share:
                # and so does its novelty rule, which its kept thresholds were set for (a folder from
                # before the shares left the graph gets today's rule)
                meta_out = replace(meta_out, **{k: getattr(source_meta, k) for k in NOVELTY_RULE_FIELDS})
            if kept_net is not None:
                shutil.copytree(kept_net, out / COARSE_MAP_DIR)
                meta_out = replace(meta_out, coarse_map_weight=source_meta.coarse_map_weight)
            meta_out.save(out)
    if coarse_map is not None:
        add_coarse_map_net(out, coarse_map, coarse_map_weight)
    return out


def add_coarse_map_net(model_dir: str | Path, checkpoint: str | Path, weight: float = COARSE_NET_MAP_WEIGHT) -> Path:
    """Export the network of ``checkpoint`` (a run trained at the coarse pass's image scale,
    ``train --image-scale 0.5``), without its tile memories, as the model folder
    ``model_dir/coarse_map/``, and set ``coarse_map_weight`` in ``model_dir``'s sidecar. The
    backends then run it on the coarse pass's tiles only, and its maps, stitched on the coarse grid,
    are added to the defect map at that weight. Returns the
    new folder."""
    model_dir = Path(model_dir)
    meta = ModelMeta.load(model_dir)
    if meta.coarse_scale <= 0:
        raise ValueError(f"--coarse-map: {model_dir} has no coarse pass (no tile memory at half scale) for its map to "
                         "read; fit the memories first (export_model --memory-data OK_IMAGES)")
    if weight <= 0:
        raise ValueError(f"--coarse-map-weight {weight}: must be above 0 (0.25 is the tested weight)")
    net, state = load_checkpoint(checkpoint)
    cfg = state["config"]
    scale = float(cfg.get("image_scale", 1.0))
    if cfg["arch"] != "tiny_unet" or cfg["channels"] != meta.in_channels or scale != meta.coarse_scale:
        raise ValueError(f"--coarse-map {checkpoint}: a {cfg['arch']} with {cfg['channels']} channel(s) trained at "
                         f"image scale {scale}; it must be a tiny_unet with {meta.in_channels} channel(s) trained at "
                         f"the coarse pass's scale: train --image-scale {meta.coarse_scale} --width 8")
    net.memory = net.coarse_memory = None  # its map is all that is read
    folder = export_module(net, cfg, model_dir / COARSE_MAP_DIR, meta.opset, data_hash=state.get("training_data_hash", ""),
                           extra={"train_steps": int(state["step"]), "image_scale": scale},
                           map_blur_sigma=0.0)  # its tile maps are read, not a finished map
    replace(meta, coarse_map_weight=weight).save(model_dir)
    return folder


def export_untrained(arch: str, width: int, channels: int, out: str | Path, seed: int = 0) -> Path:
    """A randomly initialised model folder: for speed measurements only (``extra.untrained``)."""
    torch.manual_seed(seed)
    model = build_model(arch, channels, width).eval()
    cfg = {"arch": arch, "width": width, "channels": channels, "command": "export_model --untrained"}
    return export_module(model, cfg, out, extra={"untrained": True})


def export_module(model: torch.nn.Module, cfg: dict, out: str | Path, opset: int = 17,
                  thresholds: tuple[float, float] | None = None, data_hash: str = "", extra: dict | None = None,
                  map_blur_sigma: float = MAP_BLUR_SIGMA, line_grids: dict | None = None) -> Path:
    if opset < 17:
        raise ValueError(f"opset must be >= 17, got {opset}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    module = inference_module(cfg["arch"], model)
    onnx_path = export_onnx(module, cfg["channels"], out / ONNX_NAME, opset)
    store_exact_fp16_constants(onnx_path)
    unsupported = sorted(onnx_operators(onnx_path) - TENSORRT_NATIVE_OPS)
    if unsupported and cfg["arch"] in TENSORRT_ARCHS:
        raise ExportError(f"{onnx_path}: operators {unsupported} are outside the TensorRT-native set; "
                          f"a {cfg['arch']} model must build with TensorRT, so change the model, not this check")
    extra = {**(extra or {}), "tensorrt_native": not unsupported}
    if unsupported:  # a report-only baseline (AE-SSIM's in-graph SSIM): ONNX Runtime and torch serve it
        extra["non_tensorrt_ops"] = unsupported
    diff = check_forward(module, onnx_path, cfg["channels"])
    torch.save(compact_state(model), out / WEIGHTS_NAME)
    previous = ModelMeta.load(out) if (out / META_NAME).is_file() else None
    pixel_t, image_t = thresholds or ((previous.pixel_threshold, previous.image_threshold) if previous else (0.5, 0.5))
    has_coarse = getattr(model, "coarse_memory", None) is not None
    has_memory = getattr(model, "memory", None) is not None
    meta = ModelMeta(
        arch=cfg["arch"], width=cfg["width"], in_channels=cfg["channels"], pixel_threshold=pixel_t,
        map_score_weight=0.0 if has_memory else 0.5, coarse_scale=COARSE_SCALE if has_coarse else 0.0,
        **novelty_rule(has_memory, has_coarse),
        image_threshold=image_t, map_blur_sigma=map_blur_sigma, line_grids=dict(line_grids or {}),
        training_data_hash=data_hash,
        training_command=cfg.get("command", ""), opset=opset,
        extra={**extra, "onnx_vs_torch_max_abs_diff": diff},
    )
    meta.save(out)
    if (out / COARSE_MAP_DIR).is_dir():  # an earlier export's: it does not belong to this network
        shutil.rmtree(out / COARSE_MAP_DIR)
    return out


def check_map_blur_sigma(sigma: float) -> None:
    problem = map_blur_sigma_problem(sigma)
    if problem:
        raise ValueError(f"--map-blur-sigma {sigma:g}: {problem}")


def set_map_blur(model_dir: str | Path, sigma: float) -> ModelMeta:
    """Set ``map_blur_sigma`` in ``model_dir``'s sidecar (the weights and memories stay as they are).
    Its pixel threshold was set for the map as it was smoothed before: set it again with
    ``evaluate --set-thresholds``."""
    check_map_blur_sigma(sigma)
    meta = replace(ModelMeta.load(model_dir), map_blur_sigma=float(sigma))
    meta.save(model_dir)
    return meta


def copy_model(src: str | Path, dst: str | Path) -> Path:
    dst = Path(dst)
    shutil.copytree(src, dst, dirs_exist_ok=True)
    return dst
