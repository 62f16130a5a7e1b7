"""The commissioning benchmark behind ``commission_bench``: per random line, simulate its recorded OK
frames and its test parts, commission it with one call, run the whole line on the test parts."""
from __future__ import annotations

import json
import os
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import cv2

from calibration.commission import split_frames


def _split_product(data: Path, folder: Path, held_fraction: float) -> tuple[Path, Path]:
    """Two MVTec-style folders sharing ``data``'s test split, with disjoint halves of its OK training
    images: A (the product's part images, and the parts of the frames fitted on) and B (the parts of
    the held-out frames). On a real line the frames show other physical parts than the model's
    images; without this the held-out frames would show parts the memory holds, and the threshold
    would sit too low."""
    from engines.data import training_images
    from pipeline.sim import _is_portrait

    images = training_images(data)
    # every third part the line can show (portrait ones) is kept for the held-out frames: both sets
    # get parts however few there are
    held = set([p for p in images if _is_portrait(p)][::max(2, round(1 / held_fraction))])
    out = []
    for name, keep in (("A", lambda p: p not in held), ("B", lambda p: p in held)):
        root = folder / name
        (root / "train" / "good").mkdir(parents=True)
        for sub in ("test", "ground_truth"):
            if (data / sub).is_dir():
                os.symlink((data / sub).resolve(), root / sub)
        for p in images:
            if keep(p):
                os.symlink(p.resolve(), root / "train" / "good" / p.name)
        out.append(root)
    return out[0], out[1]


def _recorded_frames(fit: list, held: list, folder: Path, held_fraction: float) -> Path:
    """The frames as a user's folder: each held-out frame under a name commission_line holds out."""
    folder.mkdir(parents=True)
    fit, held = list(fit), list(held)
    i = 0
    while fit or held:
        name = Path(f"{i:06d}.jpg")
        pool = held if split_frames([name], held_fraction)[1] else fit
        if pool:
            cv2.imwrite(str(folder / name), pool.pop().frame)
        i += 1
    return folder


def geometry_for(seed: int, overrides: dict[str, str] | None = None):
    """Line ``seed``'s random geometry with ``overrides`` ({field: text}) applied."""
    import dataclasses

    from pipeline.sim import LineGeometry

    g = LineGeometry.random(seed)
    fields = {f.name: f for f in dataclasses.fields(LineGeometry)}
    changes = {}
    for key, text in (overrides or {}).items():
        if key not in fields:
            raise ValueError(f"--set {key}: not a geometry field; expected one of {sorted(fields)}")
        current = getattr(g, key)
        if isinstance(current, bool):
            changes[key] = text.lower() in ("1", "true", "yes")
        elif isinstance(current, tuple):
            changes[key] = tuple(int(v) for v in text.split(","))
        else:
            changes[key] = type(current)(float(text)) if isinstance(current, int) else type(current)(text)
    return dataclasses.replace(g, **changes)


class PartImageScores:
    """The model's image score of a test part's own image (unrectified, no line, the model as
    shipped), each image scored once: what the detector alone makes of the parts a line is judged
    on, so a line's figures can be told apart from the detector's."""

    def __init__(self, data: str | Path, model: str | Path):
        self.data, self.model = Path(data), model
        self.detector = None
        self.scores: dict[tuple[str, str], float] = {}

    def __call__(self, defect_type: str, name: str) -> float:
        key = (defect_type, name)
        if key not in self.scores:
            from engines.backends import load_backend
            from engines.data import read_image
            from engines.detector import Detector

            if self.detector is None:
                self.detector = Detector(load_backend("onnxruntime", self.model))
            img = read_image(self.data / "test" / defect_type / name, self.detector.meta.in_channels)
            self.scores[key] = float(self.detector.predict(img).score)
        return self.scores[key]


def detector_alone(truths: list[dict], scorer: Callable[[str, str], float]) -> dict:
    """:func:`score_ranking` of the same OK and NG parts scored on their own images."""
    from pipeline.benchmark import score_ranking

    parts = [t for t in truths if t["verdict"] in ("OK", "NG")]
    ng = [scorer(t["defect_type"], t["source_image"]) for t in parts if t["verdict"] == "NG"]
    ok = [scorer(t["defect_type"], t["source_image"]) for t in parts if t["verdict"] == "OK"]
    return score_ranking(ng, ok)


def bench_line(data: str | Path, model: str | Path, seed: int, out: Path, fit_frames: int, ok: int, ng: int,
               target: float, overrides: dict[str, str] | None = None, scorer: PartImageScores | None = None
               ) -> dict:
    from calibration.commission import HELD_OUT_FRACTION, commission_line
    from pipeline.benchmark import FALSE_ALARM_BUDGET, pipeline_benchmark
    from pipeline.sim import simulate, write_geometry, write_sequence

    geometry = geometry_for(seed, overrides)
    folder = out / f"line{seed:03d}"
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    t0 = time.monotonic()
    part_images, held_parts = _split_product(Path(data), folder / "product", HELD_OUT_FRACTION)
    n_held = int(round(fit_frames * HELD_OUT_FRACTION))
    fit = simulate(part_images, fit_frames - n_held, 0, 0, seed=1000 + seed, ok_from="train/good", geometry=geometry)
    held = simulate(held_parts, n_held, 0, 0, seed=3000 + seed, ok_from="train/good", geometry=geometry)
    frames = _recorded_frames(fit, held, folder / "ok_frames", HELD_OUT_FRACTION)
    test_frames = simulate(data, ok, ng, 5, seed=2000 + seed, geometry=geometry)
    alone = detector_alone([f.truth for f in test_frames], scorer or PartImageScores(data, model))
    test = write_sequence(test_frames, folder / "test", ext=".jpg")
    write_geometry(geometry, folder)
    result = commission_line(frames, model, folder / "line.yaml", target, part_images=part_images, progress=False)
    commissioned = time.monotonic() - t0
    report = pipeline_benchmark(test, folder / "line.yaml")
    acc = report.get("accuracy") or {}
    expected = ok + ng + 5
    return {"seed": seed, "geometry": asdict(geometry), "camera": "mono" if geometry.mono else "colour",
            "threshold": result.threshold, "held_out_false_alarm_upper95": round(result.false_alarm_upper95, 4),
            "ng_recall": round(acc.get("ng_recall", 0.0), 4), "false_alarm_rate": round(acc.get("false_alarm_rate", 1.0), 4),
            "score_auroc": acc.get("score_auroc"),
            # with the best threshold for the bar's false alarms: what separation alone allows
            "ng_recall_at_best_threshold": acc.get(f"ng_recall_at_fa_{FALSE_ALARM_BUDGET:g}"),
            # the same parts' own images through the detector alone: the ceiling the line works under
            "detector_auroc": alone.get("score_auroc"),
            "detector_recall_at_best_threshold": alone.get(f"ng_recall_at_fa_{FALSE_ALARM_BUDGET:g}"),
            "frames": report["frames"], "frames_expected": expected,
            "exit_code": report["exit_code"], "verdicts": report["verdicts"],
            "commission_s": round(commissioned, 1)}


def commission_bench(data: str | Path, model: str | Path, seeds: list[int], out: str | Path, fit_frames: int = 300,
                     ok: int = 60, ng: int = 60, target: float = 0.03, recall_bar: float = 0.95,
                     false_alarm_bar: float = 0.05, overrides: dict[str, str] | None = None) -> list[dict]:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    scorer = PartImageScores(data, model)
    for seed in seeds:
        print(f"commission_bench: line {seed} ...", file=sys.stderr, flush=True)
        try:
            row = bench_line(data, model, seed, out, fit_frames, ok, ng, target, overrides, scorer)
        except ValueError as exc:  # commissioning refused this line (e.g. no part told from the belt)
            g = asdict(geometry_for(seed, overrides))
            row = {"seed": seed, "geometry": g, "camera": "mono" if g["mono"] else "colour", "threshold": float("nan"),
                   "ng_recall": 0.0, "false_alarm_rate": float("nan"), "score_auroc": None, "frames": 0,
                   "frames_expected": ok + ng + 5, "exit_code": None, "error": str(exc)}
            print(f"commission_bench: line {seed}: commissioning failed: {exc}", file=sys.stderr, flush=True)
        row["meets_bar"] = (row["ng_recall"] >= recall_bar and row["false_alarm_rate"] <= false_alarm_bar
                            and row["frames"] == row["frames_expected"] and row["exit_code"] == 0)
        rows.append(row)
        print(format_table([row], header=False), file=sys.stderr, flush=True)
        (out / "summary.json").write_text(json.dumps(rows, indent=1))
    return rows


def format_table(rows: list[dict], header: bool = True) -> str:
    head = (f"{'line':>5} {'camera':>6} {'view':>9} {'part px':>7} {'angle':>5} {'belt':>13} {'thresh':>6} "
            f"{'NG recall':>9} {'false al.':>9} {'AUROC':>6} {'best rec.':>9} {'det. AUROC':>10} {'det. rec.':>9} "
            f"{'frames':>9} bar")
    lines = [head] if header else []
    for r in rows:
        g = r["geometry"]
        lines.append(f"{r['seed']:>5} {r['camera']:>6} {g['width']}x{g['height']:<4} {g['part_long_side']:>7} "
                     f"{g['max_angle']:>5.1f} {str(tuple(g['belt_bgr'])):>13} {r['threshold']:>6.3f} "
                     f"{r['ng_recall']:>9.3f} {r['false_alarm_rate']:>9.3f} {r['score_auroc'] or 0:>6.3f} "
                     f"{r.get('ng_recall_at_best_threshold') or 0:>9.3f} {r.get('detector_auroc') or 0:>10.3f} "
                     f"{r.get('detector_recall_at_best_threshold') or 0:>9.3f} "
                     f"{r['frames']:>4}/{r['frames_expected']:<4} {'met' if r.get('meets_bar') else 'MISSED'}"
                     + (" (commissioning failed)" if r.get("error") else ""))
    return "\n".join(lines)
