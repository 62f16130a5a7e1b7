"""Whole-pipeline benchmark over a recorded sequence: frames/s, frame-to-verdict latency, time per
stage, the pipeline's own per-frame overhead (everything but the model), and, when the sequence
carries ``truth.jsonl``, NG recall and false-alarm rate at the line's threshold and, from the
scores, AUROC and NG recall at <= 5 % false alarms (the line's operating point)."""
from __future__ import annotations

import json
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np

from engines.artifact import ModelMeta
from engines.metrics import FALSE_ALARM_BUDGET, false_alarm_bar
from pipeline import messages, wire
from pipeline.config import VERDICTS, load_config
from pipeline.processing import Preprocessor, decide
from pipeline.sequence import iter_sequence
from pipeline.sources import decode_frame
from pipeline.vision.defects import box_iou

DEMO_CONFIG = Path(__file__).resolve().parent.parent / "configs" / "demo_line.yaml"


def overhead_per_frame(seq: str | Path, config: str | Path, max_frames: int = 50) -> list[float]:
    """ms per frame of preprocessing, wire encode/decode of every message and stitching/decision,
    in process, with the model replaced by a zero map (model time is what the engine benchmark measures)."""
    cfg = load_config(config)
    meta = ModelMeta.load(cfg.inference.model)
    prep = Preprocessor.for_model(cfg.preprocess, meta)
    rule = meta.map_rule()
    times = []
    for i, (_name, _ns, path) in enumerate(iter_sequence(seq)):
        if i >= max_frames:
            break
        frame, _ = decode_frame(path)
        if frame is None:
            continue
        t0 = time.perf_counter()
        ids = messages.frame(i, str(path), time.monotonic_ns())
        wire.decode(wire.encode(ids, {"image": frame}))
        p = prep(frame)
        if p.verdict is None:  # only frames with a part: empty belt would flatter the median
            grids = {"grid": p.grid.to_dict(), **({"coarse_grid": p.coarse_grid.to_dict()} if p.coarse_grid else {})}
            header = messages.tiles(ids, grids, p.H, [0, 0])
            msg = wire.decode(wire.encode(header, {"tiles": p.tiles, "tile_index": p.tile_index,
                                                   "part_mask": p.part_mask}))
            maps = np.zeros((len(msg[1]["tiles"]), 1, meta.tile_size, meta.tile_size), np.float16)
            scores = np.zeros((len(maps), 2) if meta.coarse_scale > 0 else len(maps), np.float32)
            wire.decode(wire.encode(messages.maps(header, [0, 0], len(maps)),
                                    {"maps": maps, "scores": scores, "tile_index": p.tile_index,
                                     "part_mask": p.part_mask}))
            decide(p.part(maps.astype(np.float32), scores), p.H, cfg.decision, meta.pixel_threshold,
                   meta.image_threshold, rule)
            times.append((time.perf_counter() - t0) * 1000.0)
    return times


def score_ranking(ng_scores: list[float], ok_scores: list[float], fa_budget: float = FALSE_ALARM_BUDGET) -> dict:
    """Threshold-free line accuracy from the parts' image scores: AUROC (ties count half) and the
    NG recall of the best threshold that flags at most ``fa_budget`` of the OK parts. A part with no
    score (NO_PART, ERROR) counts as scoring below every other part: a missed NG part."""
    ng = np.array([-np.inf if s is None else s for s in ng_scores], np.float64)
    ok = np.array([-np.inf if s is None else s for s in ok_scores], np.float64)
    if not len(ng) or not len(ok):
        return {}
    auroc = float(((ng[:, None] > ok[None]).sum() + 0.5 * (ng[:, None] == ok[None]).sum()) / (len(ng) * len(ok)))
    bar = false_alarm_bar(ok, fa_budget)  # NG must score above this
    return {"score_auroc": round(auroc, 4), f"ng_recall_at_fa_{fa_budget:g}": round(float((ng > bar).mean()), 4),
            "threshold_at_fa_budget": None if not np.isfinite(bar) else round(float(bar), 4)}


def defect_localisation(results: list[dict], truth: dict[str, dict]) -> dict:
    """How the reported defects of NG parts that the line flagged NG meet the truth boxes (a box
    meets another when they overlap, IoU > 0): the share of truth boxes that some reported box
    meets, the share of reported boxes that meet a truth box, the share of parts whose strongest
    defect (first listed) does, the mean IoU of that defect with the truth box it meets best (how
    well its extent matches: a region covering the whole part meets the truth but scores low), and
    defects per part."""
    hit = boxes = on = reported = top = parts = 0
    top_iou = 0.0
    for r in results:
        t = truth.get(r["source_name"])
        if not t or t["verdict"] != "NG" or r["verdict"] != "NG" or not t.get("boxes"):
            continue
        found = [d["bbox"] for d in r.get("defects", [])]
        parts += 1
        boxes += len(t["boxes"])
        hit += sum(any(box_iou(f, b) > 0 for f in found) for b in t["boxes"])
        reported += len(found)
        on += sum(any(box_iou(f, b) > 0 for b in t["boxes"]) for f in found)
        top += bool(found) and any(box_iou(found[0], b) > 0 for b in t["boxes"])
        top_iou += max(box_iou(found[0], b) for b in t["boxes"]) if found else 0.0
    if not parts:
        return {}
    return {"flagged_ng_parts": parts, "truth_boxes_hit": round(hit / boxes, 4),
            "defects_on_truth": round(on / max(1, reported), 4), "top_defect_on_truth": round(top / parts, 4),
            "top_defect_iou": round(top_iou / parts, 4),
            "defects_per_flagged_ng_part": round(reported / parts, 2)}


def line_accuracy(results: list[dict], truth_path: Path) -> dict | None:
    """Verdicts against ``truth.jsonl`` at the line's threshold, plus :func:`score_ranking` and
    :func:`budget_parts`."""
    if not truth_path.is_file():
        return None
    truth = {t["file"]: t for t in map(json.loads, truth_path.read_text().splitlines())}
    parts = [(truth[r["source_name"]]["verdict"], r["verdict"], r.get("score")) for r in results
             if r["source_name"] in truth and truth[r["source_name"]]["verdict"] in ("OK", "NG")]
    ng = [v for t, v, _ in parts if t == "NG"]
    ok = [v for t, v, _ in parts if t == "OK"]
    return {"ng_parts": len(ng), "ok_parts": len(ok),
            "ng_recall": sum(v == "NG" for v in ng) / max(1, len(ng)),
            "false_alarm_rate": sum(v == "NG" for v in ok) / max(1, len(ok)),
            "verdict_matches_truth": sum(truth[r["source_name"]]["verdict"] == r["verdict"] for r in results
                                         if r["source_name"] in truth) / max(1, len(results)),
            **score_ranking([s for t, _, s in parts if t == "NG"], [s for t, _, s in parts if t == "OK"]),
            **budget_parts(results, truth),
            "localisation": defect_localisation(results, truth)}


def budget_parts(results: list[dict], truth: dict[str, dict], fa_budget: float = FALSE_ALARM_BUDGET) -> dict:
    """Which parts decide NG recall at ``fa_budget`` false alarms: the OK parts at or above the bar
    (the ones that may alarm, then the one that sets it), strongest first, and the NG parts at or
    below it, weakest first. Each names its frame, its source image and defect type where the truth
    gives them, and its score (None: never scored), so a person can look at what limits the line."""
    def row(r: dict) -> dict:
        t = truth[r["source_name"]]
        return {"file": r["source_name"], "source_image": t.get("source_image"), "defect_type": t.get("defect_type"),
                "score": None if r.get("score") is None else round(float(r["score"]), 4)}

    ok = [r for r in results if truth.get(r["source_name"], {}).get("verdict") == "OK"]
    ng = [r for r in results if truth.get(r["source_name"], {}).get("verdict") == "NG"]
    if not ok or not ng:
        return {}
    bar = false_alarm_bar([r.get("score") for r in ok], fa_budget)
    key = lambda r: -np.inf if r.get("score") is None else r["score"]  # noqa: E731
    return {"ok_parts_setting_the_bar": [row(r) for r in sorted(ok, key=key, reverse=True) if key(r) >= bar],
            "ng_parts_missed_at_the_bar": [row(r) for r in sorted(ng, key=key) if key(r) <= bar]}


def line_summary(runs: list[dict]) -> dict:
    """Over several ``pipeline_benchmark`` reports: NG recall at <= 5 % false alarms per sequence,
    its mean, minimum and maximum, the mean line AUROC, frames/s and own overhead ranges, the NG
    parts missed at each sequence's bar by defect type, and how often each OK source image was among
    the parts setting the bar. Sequences without truth count only for speed."""
    judged = [r for r in runs if r.get("accuracy", {}).get(f"ng_recall_at_fa_{FALSE_ALARM_BUDGET:g}") is not None]
    recall = [r["accuracy"][f"ng_recall_at_fa_{FALSE_ALARM_BUDGET:g}"] for r in judged]
    missed = Counter(part["defect_type"] or "?" for r in judged for part in r["accuracy"].get("ng_parts_missed_at_the_bar", []))
    bar_sources = Counter(part["source_image"] or part["file"]
                          for r in judged for part in r["accuracy"].get("ok_parts_setting_the_bar", []))
    overhead = [r["overhead_ms_per_frame"]["p50"] for r in runs if r.get("overhead_ms_per_frame")]
    out = {"sequences": len(runs), "judged": len(judged),
           "frames_per_s": [min(r["frames_per_s"] for r in runs), max(r["frames_per_s"] for r in runs)],
           "overhead_ms_per_frame_p50": [min(overhead), max(overhead)] if overhead else []}
    if judged:
        out.update({f"ng_recall_at_fa_{FALSE_ALARM_BUDGET:g}": {
                        "per_sequence": recall, "mean": round(float(np.mean(recall)), 4),
                        "min": min(recall), "max": max(recall)},
                    "score_auroc_mean": round(float(np.mean([r["accuracy"]["score_auroc"] for r in judged])), 4),
                    "ng_missed_at_the_bar_by_type": dict(sorted(missed.items())),
                    "ok_sources_setting_the_bar": dict(bar_sources.most_common())})
    return out


def without_verdict(results: list[dict]) -> list[dict]:
    """The records that got no OK/NG verdict (NO_PART, ERROR, DROPPED), each with its frame and
    the reason its stage gave: a figure with such frames in it says which and why."""
    return [{"frame_id": r.get("frame_id"), "source_name": r.get("source_name"), "verdict": r["verdict"],
             "reason": r.get("reason", "")} for r in results if r["verdict"] not in ("OK", "NG")]


def pipeline_benchmark(seq: str | Path, config: str | Path | None, model: str | Path | None = None,
                       realtime: bool = False) -> dict:
    """As fast as possible (``realtime=False``) measures throughput, and latency then includes the
    backlog the source builds; at recorded pace (``realtime=True``, the source acting as a camera
    that drops under overload) latency is what a part on the line would see."""
    from pipeline.config import dump_config
    from pipeline.sinks.results_log import read_records
    from pipeline.supervisor import run_pipeline

    config = Path(config or DEMO_CONFIG)
    with tempfile.TemporaryDirectory(prefix="bench-") as tmp:
        results_path = Path(tmp) / "results.jsonl"
        cfg = load_config(config)
        if model:
            cfg.inference.model = str(Path(model).resolve())
        cfg.source.realtime = realtime
        cfg_path = dump_config(cfg, Path(tmp) / "line.yaml")
        t0 = time.perf_counter()
        code = run_pipeline(cfg_path, f"replay:{seq}", results_path, show_status=False)
        wall = time.perf_counter() - t0
        results = read_records(results_path)
        overhead = overhead_per_frame(seq, cfg_path)
    lat = np.array([r["latency_ms"] for r in results if r.get("latency_ms") is not None])
    stage_totals: dict[str, float] = {}
    for r in results:
        for k, v in (r.get("stage_ms") or {}).items():
            stage_totals[k] = stage_totals.get(k, 0.0) + v
    total = sum(stage_totals.values()) or 1.0
    report = {
        "sequence": str(seq), "pace": "recorded" if realtime else "as fast as possible", "exit_code": code,
        "frames": len(results), "wall_s": round(wall, 2),
        "frames_per_s": round(len(results) / wall, 2),
        "latency_ms": {p: round(float(np.percentile(lat, q)), 1) for p, q in (("p50", 50), ("p90", 90), ("p99", 99))}
        if lat.size else {},
        "stage_share": {k: round(v / total, 3) for k, v in stage_totals.items()},
        "overhead_ms_per_frame": {"p50": round(float(np.median(overhead)), 2),
                                  "p90": round(float(np.percentile(overhead, 90)), 2)} if overhead else {},
        "verdicts": {v: sum(r["verdict"] == v for r in results) for v in VERDICTS},
        "without_verdict": without_verdict(results),
    }
    acc = line_accuracy(results, Path(seq) / "truth.jsonl")
    if acc:
        report["accuracy"] = acc
    return report
