"""results.jsonl: one JSON object per frame, each line written whole or not at all.

A results file left by an earlier run is set aside under its own time (``set_aside``), never
overwritten: a line service restarted after a lost camera keeps the results before the restart.

Besides the frame records, the file holds event lines, ``{"event": ..., "frame_id": ..., ...}``:
``undelivered`` when a sink (the PLC, say) did not get a frame's result, with the sink and why.
``read_records`` returns the frame records alone.

A line that cannot be written (disk full, file too large, folder gone read-only) is cut back to the
end of the last whole line, so the file never holds a torn line; it and the lines after it wait in
memory (up to ``BACKLOG``) and go out in order once writing works again.
"""
from __future__ import annotations

import collections
import json
import os
import time
from pathlib import Path

from pipeline.log import get
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
            rec = json.loads(line)
            if "event" not in rec:
                return int(rec["frame_id"])
        except (ValueError, KeyError, TypeError):
            continue
    return -1


def read_records(path: str | Path) -> list[dict]:
    """The frame records of a results file, in file order (event lines left out)."""
    out = []
    for line in Path(path).read_text().splitlines():
        if line.strip():
            rec = json.loads(line)
            if "event" not in rec:
                out.append(rec)
    return out


# Lines kept in memory while the file cannot be written; past it the oldest are dropped (and counted).
BACKLOG = 100_000


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
        self.fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        self.count = 0
        self.backlog: collections.deque[bytes] = collections.deque()
        self.lost = 0
        self.failing_since: float | None = None

    def _write_line(self, line: bytes) -> None:
        """The whole line or nothing: a short write (disk full, RLIMIT_FSIZE) is cut back."""
        start = os.lseek(self.fd, 0, os.SEEK_END)
        done = 0
        try:
            while done < len(line):
                n = os.write(self.fd, line[done:])
                if n <= 0:
                    raise OSError(f"wrote {n} bytes")
                done += n
        except OSError:
            if done:
                os.ftruncate(self.fd, start)
            raise

    def _flush_backlog(self) -> bool:
        while self.backlog:
            try:
                self._write_line(self.backlog[0])
            except OSError as exc:
                if self.failing_since is None:
                    self.failing_since = time.monotonic()
                    get("results log").warning(f"cannot write {self.path} ({exc.strerror or exc}); keeping the records "
                          f"in memory (up to {BACKLOG}) until it can")
                return False
            self.backlog.popleft()
            self.count += 1
        if self.failing_since is not None:
            get("results log").warning(f"writing {self.path} again after {time.monotonic() - self.failing_since:.0f} s; "
                  f"nothing kept back was lost" if not self.lost else
                  f"results log: writing {self.path} again; {self.lost} line(s) were dropped meanwhile")
            self.failing_since = None
        return True

    def _append(self, obj: dict) -> None:
        if len(self.backlog) >= BACKLOG:
            self.backlog.popleft()
            self.lost += 1
        self.backlog.append((json.dumps(obj) + "\n").encode())
        self._flush_backlog()

    def handle(self, record, arrays, H) -> None:
        self._append({k: record.get(k) for k in PUBLIC_FIELDS})

    def event(self, event: str, frame_id: int, **fields) -> None:
        self._append({"event": event, "frame_id": frame_id, **fields, "at": utc_iso(time.time_ns())})

    def tick(self) -> None:
        if self.backlog:
            self._flush_backlog()

    def close(self) -> None:
        self._flush_backlog()
        if self.backlog:
            get("results log").warning(f"{len(self.backlog)} record(s) could not be written to {self.path}")
        os.close(self.fd)
