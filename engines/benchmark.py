"""Honest ms-per-tile numbers: warm-up, repeated timed calls, percentiles, and the machine's limit.

Model cost (parameters, multiply-accumulates) is read from the ONNX graph itself, so the numbers
hold for any model folder, fp32 or int8, without torch.
"""
from __future__ import annotations

import datetime as dt
import os
import platform
import time
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from engines.artifact import COARSE_MAP_DIR, ONNX_NAME, model_paths
from engines.backends import BackendUnavailable, load_backend


@dataclass
class BenchResult:
    backend: str
    batch: int
    ms_per_tile_mean: float
    ms_per_tile_p50: float
    ms_per_tile_p99: float
    tiles_per_s: float
    calls: int
    device: str
    precision: str
    ms_per_tile_device: float | None = None  # accelerators: compute alone, input and output on the device


def onnx_cost(onnx_path: Path) -> tuple[int, int]:
    """(parameters, MACs per tile) of Conv and Gemm nodes, from shape inference at batch 1."""
    from onnx import numpy_helper, shape_inference

    from engines.artifact import read_onnx

    model = read_onnx(onnx_path)
    dim = model.graph.input[0].type.tensor_type.shape.dim[0]
    dim.ClearField("dim_param")
    dim.dim_value = 1
    inferred = shape_inference.infer_shapes(model)
    shapes = {}
    for vi in list(inferred.graph.value_info) + list(inferred.graph.output) + list(inferred.graph.input):
        shapes[vi.name] = [d.dim_value for d in vi.type.tensor_type.shape.dim]
    inits = {i.name: numpy_helper.to_array(i).shape for i in model.graph.initializer}
    producers = {o: n for n in model.graph.node for o in n.output}

    def weight_shape(name: str):
        if name in inits:
            return inits[name]
        node = producers.get(name)  # QDQ graphs: weight -> DequantizeLinear -> Conv; fp16 banks: -> Cast
        return inits.get(node.input[0]) if node is not None and node.op_type in ("DequantizeLinear", "Cast") else None

    params = int(sum(np.prod(s) for n, s in inits.items() if len(s) >= 1 and np.prod(s) > 1
                     and not n.endswith(("_scale", "_zero_point"))))
    macs = 0
    for node in model.graph.node:
        if node.op_type == "Conv":
            w = weight_shape(node.input[1])
            out = shapes.get(node.output[0])
            if w is not None and out:
                macs += int(np.prod(out[1:])) * int(np.prod(w[1:]))
        elif node.op_type == "Gemm":
            w = weight_shape(node.input[1])
            if w is not None:
                macs += int(np.prod(w))
        elif node.op_type == "MatMul":  # e.g. the tile memory: embedding x stored bank
            w = weight_shape(node.input[1])
            out = shapes.get(node.output[0])
            if w is not None and out:
                macs += int(np.prod(out[:-1])) * int(np.prod(w))
    return params, macs


def _best_seconds(fn, seconds: float) -> float:
    fn()
    best = float("inf")
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def measure_fp32_peak_gflops(size: int = 2048, seconds: float = 4.0, threads: int = 0) -> float:
    """The machine's practical fp32 limit: the best sustained GFLOP/s of a large matrix product, in
    ONNX Runtime (MLAS) and in numpy's BLAS, whichever is faster. Best-of timing, because shared
    virtual machines have noisy neighbours; a low figure here would flatter every ratio against it."""
    import onnxruntime as ort
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("MatMul", ["a", "b"], ["c"])], "peak",
                              [helper.make_tensor_value_info("a", TensorProto.FLOAT, [size, size]),
                               helper.make_tensor_value_info("b", TensorProto.FLOAT, [size, size])],
                              [helper.make_tensor_value_info("c", TensorProto.FLOAT, [size, size])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = threads
    sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    a = np.random.default_rng(0).random((size, size), np.float32)
    best = min(_best_seconds(lambda: sess.run(None, {"a": a, "b": a}), seconds / 2),
               _best_seconds(lambda: a @ a, seconds / 2))
    return 2.0 * size**3 / best / 1e9


def time_backend(engine, batch: int, min_seconds: float, min_calls: int, warmup: int = 3) -> list[float]:
    meta = engine.meta
    x = np.random.default_rng(0).normal(0, 1, (batch, meta.in_channels, meta.tile_size, meta.tile_size)).astype(np.float32)
    for _ in range(warmup):
        engine.infer(x)
    times = []
    end = time.perf_counter() + min_seconds
    while len(times) < min_calls or time.perf_counter() < end:
        t0 = time.perf_counter()
        engine.infer(x)
        times.append(time.perf_counter() - t0)
    return times


def run_benchmark(model: str | Path, backends: list[str], batches: list[int], min_seconds: float = 3.0,
                  min_calls: int = 10, backend_options: dict | None = None, progress=print) -> dict:
    onnx_path, meta = model_paths(model)
    params, macs = onnx_cost(onnx_path)
    results, skipped, coarse_results = [], [], []
    for name in backends:
        try:
            engine = load_backend(name, model, **(backend_options or {}).get(name, {}))
        except BackendUnavailable as exc:
            skipped.append({"backend": name, "reason": str(exc)})
            progress(f"{name}: skipped ({exc})")
            continue
        for batch in batches:
            results.append(time_row(engine, name, batch, min_seconds, min_calls, progress))
            if engine.coarse_map is not None:
                coarse_results.append(time_row(engine.coarse_map, f"{name} coarse map", batch, min_seconds, min_calls,
                                               progress))
        engine.close()
    report = {
        "model": str(model), "onnx": str(onnx_path), "arch": meta.arch, "width": meta.width,
        "precision": meta.precision, "parameters": params, "gmac_per_tile": macs / 1e9,
        "untrained": bool(meta.extra.get("untrained", False)),
        "results": results, "skipped": skipped, "machine": machine_info(),
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }
    if meta.coarse_map_weight > 0:  # its own cost: it runs on the coarse pass's tiles only
        sub_onnx = Path(model) / COARSE_MAP_DIR / ONNX_NAME
        sub_params, sub_macs = onnx_cost(sub_onnx)
        report["coarse_map"] = {"onnx": str(sub_onnx), "parameters": sub_params, "gmac_per_tile": sub_macs / 1e9,
                                "results": coarse_results}
    return report


def time_row(engine, name: str, batch: int, min_seconds: float, min_calls: int, progress=print) -> dict:
    """One result row: ``engine`` timed at ``batch``, per tile."""
    times = np.array(time_backend(engine, batch, min_seconds, min_calls)) * 1000.0 / batch
    r = BenchResult(name, batch, float(times.mean()), float(np.percentile(times, 50)),
                    float(np.percentile(times, 99)), float(1000.0 / times.mean()), int(len(times)),
                    engine.device, engine.precision)
    device_ms = engine.device_ms(batch)
    if device_ms is not None:
        r.ms_per_tile_device = device_ms / batch
    on_device = "" if r.ms_per_tile_device is None else f", on device {r.ms_per_tile_device:.4f}"
    progress(f"{name:<12} batch {batch:>4}: {r.ms_per_tile_mean:8.3f} ms/tile mean, p50 {r.ms_per_tile_p50:.3f}, "
             f"p99 {r.ms_per_tile_p99:.3f}{on_device}, {r.tiles_per_s:9.1f} tiles/s ({r.calls} calls)")
    return asdict(r)


def machine_info() -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(), "host": platform.node()}


def _part_name(r: dict) -> str:
    """A part of ``budget_parts``: its frame, source image, defect type unless good, and score."""
    kind = "" if r["defect_type"] in (None, "good") else f", {r['defect_type']}"
    return f"{r['file']} ({r['source_image'] or '?'}{kind}) {r['score']}"


def format_results(report: dict) -> str:
    lines = [f"model {report['model']} ({report['arch']} width {report['width']}, {report['precision']}, "
             f"{report['parameters'] / 1e6:.2f}M params, {report['gmac_per_tile']:.2f} GMac/tile)"]
    lines.append(f"{'backend':<22} {'batch':>5} {'mean':>9} {'p50':>9} {'p99':>9} {'on-device':>9} {'tiles/s':>10} "
                 f"{'p50/limit':>9}  {'precision':<9} device")
    sub = report.get("coarse_map")
    for r in report["results"] + (sub["results"] if sub else []):
        ratio = f"{r['x_fp32_limit']:.2f}" if "x_fp32_limit" in r else "-"
        on_device = f"{r['ms_per_tile_device']:.4f}" if r.get("ms_per_tile_device") is not None else "-"
        lines.append(f"{r['backend']:<22} {r['batch']:>5} {r['ms_per_tile_mean']:>9.3f} {r['ms_per_tile_p50']:>9.3f} "
                     f"{r['ms_per_tile_p99']:>9.3f} {on_device:>9} {r['tiles_per_s']:>10.1f} {ratio:>9}  {r['precision']:<9} {r['device']}")
    if sub:
        lines.append(f"coarse map: the coarse-map network {sub['onnx']} ({sub['parameters'] / 1e6:.2f}M params, "
                     f"{sub['gmac_per_tile']:.2f} GMac/tile) runs on the coarse pass's tiles only")
    for s in report["skipped"]:
        lines.append(f"{s['backend']:<12} skipped: {s['reason']}")
    if "fp32_peak_gflops" in report:
        lines.append(f"machine fp32 limit: {report['fp32_peak_gflops']:.1f} GFLOP/s (best of ORT MatMul, numpy sgemm) -> "
                     f"{report['limit_ms_per_tile']:.2f} ms/tile for this model"
                     + (f", {sub['limit_ms_per_tile']:.2f} for its coarse-map network" if sub else ""))
    for p in report.get("pipelines") or ([report["pipeline"]] if "pipeline" in report else []):
        lines.append(f"pipeline over {p['sequence']} ({p.get('pace', '')}): {p['frames']} frames, {p['frames_per_s']} frames/s, latency "
                     f"{p['latency_ms']}, stage share {p['stage_share']}, own overhead per frame "
                     f"{p['overhead_ms_per_frame']} ms, verdicts {p['verdicts']}")
        for r in p.get("without_verdict", []):
            lines.append(f"  frame {r['frame_id']} ({r['source_name']}): {r['verdict']}, {r['reason'] or 'no reason given'}")
        if "accuracy" in p:
            acc = p["accuracy"]
            listed = ("ok_parts_setting_the_bar", "ng_parts_missed_at_the_bar")  # printed below, one part each
            lines.append("line accuracy vs truth: " + str({k: v for k, v in acc.items() if k not in listed}))
            if acc.get("ok_parts_setting_the_bar"):
                lines.append("OK parts at or above the 5 % bar: " + ", ".join(map(_part_name, acc["ok_parts_setting_the_bar"])))
                missed = acc["ng_parts_missed_at_the_bar"]
                kinds = Counter(r["defect_type"] or "?" for r in missed)
                lines.append(f"NG parts missed at that bar: {len(missed)} ({', '.join(f'{k} {v}' for k, v in sorted(kinds.items()))})"
                             + (": " + ", ".join(map(_part_name, missed)) if missed else ""))
    summary = report.get("line_summary")
    if summary:
        rec = summary.get("ng_recall_at_fa_0.05")
        lines.append(f"over {summary['sequences']} sequences: {summary['frames_per_s'][0]}-{summary['frames_per_s'][1]} frames/s"
                     + (f", own overhead p50 {summary['overhead_ms_per_frame_p50'][0]}-{summary['overhead_ms_per_frame_p50'][1]} ms"
                        if summary["overhead_ms_per_frame_p50"] else ""))
        if rec:
            lines.append(f"NG recall at <= 5 % false alarms: {' / '.join(f'{x:.2f}' for x in rec['per_sequence'])}; "
                         f"mean {rec['mean']:.3f} (min {rec['min']:.2f}, max {rec['max']:.2f}); mean line AUROC "
                         f"{summary['score_auroc_mean']:.4f}; missed at the bar: "
                         + (", ".join(f"{k} {v}" for k, v in summary["ng_missed_at_the_bar_by_type"].items()) or "none")
                         + "; OK source images setting the bar (sequences): "
                         + ", ".join(f"{k} {v}" for k, v in list(summary["ok_sources_setting_the_bar"].items())[:5]))
    return "\n".join(lines)
