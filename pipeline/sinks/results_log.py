"""results.jsonl: one JSON object per frame, flushed as it is written.

A results file left by an earlier run is set aside under its own time (``set_aside``), never
overwritten: a line service restarted after a lost camera keeps the results before the restart.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

from pipeline.sinks.base import Sink

PUBLIC_FIELDS = ("frame_id", "source_name", "captured_at", "verdict", "reason", "score", "defects", "latency_ms",
                 "stage_ms")


def set_aside(path: str | Path) -> list[Path]:
    """Rename a non-empty ``path`` and its ``.config.yaml`` to ``NAME.YYYYmmdd-HHMMSS.SUFFIX`` (the
    time it was last written, local time, with ``-2``, ``-3`` ... on a clash); returns the new names."""
    path = Path(path)
    if not path.is_file() or path.stat().st_size == 0:
        return []
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(path.stat().st_mtime))
    n, target = 1, path.with_name(f"{path.stem}.{stamp}{path.suffix}")
    while target.exists():
        n += 1
        target = path.with_name(f"{path.stem}.{stamp}-{n}{path.suffix}")
    moved = [target]
    path.rename(target)
    config = Path(str(path) + ".config.yaml")
    if config.is_file():
        config.rename(Path(str(target) + ".config.yaml"))
        moved.append(Path(str(target) + ".config.yaml"))
    return moved


def utc_iso(unix_ns: int) -> str:
    """``2026-11-27T17:46:01.123Z``"""
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(unix_ns // 1_000_000_000)) + f".{unix_ns // 1_000_000 % 1000:03d}Z"


class ResultsLog(Sink):
    name = "results"

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.file = self.path.open("w")
        self.count = 0

    def handle(self, record, arrays, H) -> None:
        self.file.write(json.dumps({k: record.get(k) for k in PUBLIC_FIELDS}) + "\n")
        self.file.flush()
        self.count += 1

    def close(self) -> None:
        self.file.close()
