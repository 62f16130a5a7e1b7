"""results.jsonl: one JSON object per frame, flushed as it is written.

A results file left by an earlier run is set aside under its own time (``set_aside``), never
overwritten: a line service restarted after a lost camera keeps the results before the restart.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

from pipeline.sinks.base import Sink

PUBLIC_FIELDS = ("run_id", "frame_id", "source_name", "captured_at", "verdict", "reason", "score", "defects",
                 "latency_ms", "stage_ms")


TAIL_BYTES = 1 << 20  # enough for the last records of a results file; more than any one line


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


def _tail(f) -> tuple[int, bytes]:
    """The file's size and its last TAIL_BYTES: a results file may hold days of records."""
    size = f.seek(0, 2)
    f.seek(max(0, size - TAIL_BYTES))
    return size, f.read()


def last_frame_id(path: str | Path) -> int:
    """The frame id of the last complete line of a results file; -1 when there is none."""
    path = Path(path)
    if not path.is_file():
        return -1
    with path.open("rb") as f:
        _, tail = _tail(f)
    for line in reversed(tail.split(b"\n")[:-1]):  # the piece after the last newline is incomplete
        try:
            return int(json.loads(line)["frame_id"])
        except (ValueError, KeyError, TypeError):
            continue
    return -1


class ResultsLog(Sink):
    """Appends: run_pipeline sets an earlier run's file aside, and a restarted sinks stage goes on
    with the file of its run. A line cut off by a crash is removed first."""
    name = "results"

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.is_file() and self.path.stat().st_size:
            with self.path.open("rb+") as f:
                size, tail = _tail(f)
                if not tail.endswith(b"\n"):  # keep up to the last newline (none: the whole tail goes)
                    f.truncate(size - len(tail) + tail.rfind(b"\n") + 1)
        self.file = self.path.open("a")
        self.count = 0

    def handle(self, record, arrays, H) -> None:
        self.file.write(json.dumps({k: record.get(k) for k in PUBLIC_FIELDS}) + "\n")
        self.file.flush()
        self.count += 1

    def close(self) -> None:
        self.file.close()
