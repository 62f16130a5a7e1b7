"""Comparing a results file against a golden one: verdicts must match, defect boxes within IoU."""
from __future__ import annotations

import json
from pathlib import Path

from pipeline.vision.defects import box_iou


def read_results(path: str | Path) -> dict[str, dict]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: results file not found")
    out = {}
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if line.strip():
            try:
                rec = json.loads(line)
                if "event" not in rec:  # an event line (pipeline.sinks.results_log), not a frame's record
                    out[str(rec["source_name"])] = rec
            except (ValueError, KeyError) as exc:
                raise ValueError(f"{path}:{n}: not a result record ({exc})") from exc
    return out


def compare(golden: dict[str, dict], current: dict[str, dict], iou_tol: float = 0.5) -> list[str]:
    """Human-readable differences; empty means no regression."""
    diffs = []
    for name in sorted(set(golden) | set(current)):
        g, c = golden.get(name), current.get(name)
        if g is None:
            diffs.append(f"+ {name}: new frame, verdict {c['verdict']}")
            continue
        if c is None:
            diffs.append(f"- {name}: missing from this run (golden verdict {g['verdict']})")
            continue
        if g["verdict"] != c["verdict"]:
            diffs.append(f"! {name}: verdict {g['verdict']} -> {c['verdict']} (score {g.get('score')} -> {c.get('score')})")
            continue
        gb = [d["bbox"] for d in g.get("defects") or []]
        cb = [d["bbox"] for d in c.get("defects") or []]
        unmatched = list(cb)
        for box in gb:
            best = max(unmatched, key=lambda b: box_iou(box, b), default=None)
            if best is None or box_iou(box, best) < iou_tol:
                diffs.append(f"! {name}: golden defect {box} not found (IoU < {iou_tol})")
            else:
                unmatched.remove(best)
        for box in unmatched:
            diffs.append(f"! {name}: extra defect {box}")
    return diffs
