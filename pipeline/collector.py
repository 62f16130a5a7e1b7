"""Exactly one result per frame, in frame order: the bookkeeping of the stitch stage (no sockets).

Frames are registered by the source. A result for a frame is kept until every earlier frame has
one, then released, so results files are ordered by frame even with several inference workers.
Frames pending when a stage crashes, or for longer than the timeout, get an ERROR record; a late
result for a frame already closed is ignored.
"""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Collector:
    timeout_ns: int
    registered: dict[int, dict] = field(default_factory=dict)   # frame_id -> {source_name, capture_ns}
    done: dict[int, dict] = field(default_factory=dict)         # frame_id -> record, not yet released
    closed: set[int] = field(default_factory=set)               # released frame ids
    next_id: int = 0
    expected: int | None = None
    ignored_late: int = 0

    def register(self, frame_id: int, source_name: str, capture_ns: int) -> None:
        if frame_id not in self.closed:
            self.registered.setdefault(frame_id, {"source_name": source_name, "capture_ns": capture_ns})

    def add(self, frame_id: int, record: dict) -> None:
        if frame_id in self.closed or frame_id in self.done:
            self.ignored_late += 1
            return
        self.done[frame_id] = record

    def end(self, count: int) -> None:
        self.expected = count

    def source_gone(self) -> None:
        """The source process ended without announcing its count (killed): the stream ends after the
        last frame it registered. A count it did announce stands."""
        if self.expected is None:
            self.expected = max([*self.registered, self.next_id - 1], default=-1) + 1

    def _error(self, frame_id: int, reason: str) -> dict:
        info = self.registered.get(frame_id, {})
        return {"frame_id": frame_id, "source_name": info.get("source_name"), "capture_ns": info.get("capture_ns"),
                "verdict": "ERROR", "reason": reason, "score": None, "defects": []}

    def fail_pending(self, reason: str, before_ns: int | None = None) -> int:
        """ERROR for every registered frame without a result (captured before ``before_ns``)."""
        n = 0
        for fid, info in self.registered.items():
            if fid in self.done or fid in self.closed:
                continue
            if before_ns is None or info["capture_ns"] <= before_ns:
                self.done[fid] = self._error(fid, reason)
                n += 1
        return n

    def expire(self, now_ns: int) -> int:
        return self.fail_pending(f"no result within {self.timeout_ns / 1e9:.0f} s (frame lost in the pipeline)",
                                 now_ns - self.timeout_ns)

    def release(self) -> list[dict]:
        """Records that can be emitted now, in frame order."""
        out = []
        while self.next_id in self.done:
            out.append(self.done.pop(self.next_id))
            self.registered.pop(self.next_id, None)
            self.closed.add(self.next_id)
            self.next_id += 1
        return out

    @property
    def finished(self) -> bool:
        return self.expected is not None and self.next_id >= self.expected
