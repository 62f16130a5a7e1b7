"""Append-only journals in the run folder that outlive a crashed stage.

A line written is the OS's, so a process killed with SIGKILL leaves every whole line behind; a torn
last line (a crash mid-write) is skipped when read. Each journal is rotated every ``lines`` lines,
the file before kept as ``NAME.1``, so it stays small on a line that runs for weeks while still
holding more than any stage has in flight.

- ``source.frames`` (the source) and ``stitch.frames`` (the stitch stage): ``[frame_id,
  capture_ns, source_name]`` per registered frame, and ``{"end": COUNT}`` once the stream ended.
  A restarted stitch stage reads both: which frames exist, their names, and how many there are.
- ``stitch.records``: every record the stitch stage released to the sinks, so that a restarted
  stitch stage can send again what its predecessor released but the sinks never received.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

SOURCE_JOURNAL = "source.frames"
STITCH_JOURNAL = "stitch.frames"
RECORD_JOURNAL = "stitch.records"
JOURNAL_LINES = 4096


def rotated(path: Path) -> Path:
    """Where the journal before the current one is kept."""
    return path.with_name(path.name + ".1")


class _Journal:
    def __init__(self, path: Path, resume: bool, lines: int = JOURNAL_LINES) -> None:
        self.path, self.lines, self.n = Path(path), lines, 0
        if not resume:  # a run folder used again: an earlier run's lines must not name this run's frames
            rotated(self.path).unlink(missing_ok=True)
        self.file = open(self.path, "a" if resume else "w", encoding="utf-8", buffering=1)  # line-buffered

    def _write(self, obj: object) -> None:
        if self.n >= self.lines:
            self.file.close()
            os.replace(self.path, rotated(self.path))
            self.file = open(self.path, "w", encoding="utf-8", buffering=1)
            self.n = 0
        self.file.write(json.dumps(obj) + "\n")
        self.n += 1

    def end(self, count: int) -> None:
        self._write({"end": count})

    def close(self) -> None:
        self.file.close()

    @staticmethod
    def lines_of(path: Path) -> list[object]:
        """The parsed lines of the journal and the file before it, oldest first; torn lines skipped."""
        out = []
        for file in (rotated(path), path):
            if not file.is_file():
                continue
            for line in file.read_text(encoding="utf-8", errors="replace").splitlines():
                try:
                    out.append(json.loads(line))
                except ValueError:
                    continue
        return out


class FrameJournal(_Journal):
    def add(self, frame_id: int, capture_ns: int, source_name: str) -> None:
        self._write([frame_id, capture_ns, source_name])

    @classmethod
    def read(cls, path: Path) -> dict[int, dict]:
        """frame_id -> {source_name, capture_ns}."""
        return cls.read_all(path)[0]

    @classmethod
    def read_all(cls, path: Path) -> tuple[dict[int, dict], int | None]:
        """(frame_id -> {source_name, capture_ns}, the end-of-stream count or None)."""
        frames: dict[int, dict] = {}
        end = None
        for item in cls.lines_of(path):
            try:
                if isinstance(item, dict):
                    end = int(item["end"])
                    continue
                fid, capture_ns, name = item
                frames[int(fid)] = {"source_name": str(name), "capture_ns": int(capture_ns)}
            except (ValueError, TypeError, KeyError):
                continue
        return frames, end


class RecordJournal(_Journal):
    def add(self, record: dict) -> None:
        self._write(record)

    @classmethod
    def read(cls, path: Path) -> list[dict]:
        """The records, oldest first (those with an integer frame_id)."""
        return [r for r in cls.lines_of(path) if isinstance(r, dict) and isinstance(r.get("frame_id"), int)]
