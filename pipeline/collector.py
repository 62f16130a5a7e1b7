"""Exactly one result per frame, in frame order: the bookkeeping of the stitch stage (no sockets).

Frames are registered by the source. A result for a frame is kept until every earlier frame has
one, then released, so results files are ordered by frame even with several inference workers.
The frames a crashed stage held get an ERROR record unless their result still comes within a short
grace (``crash``); frames of surviving stages go on. A frame pending for longer than the timeout
gets an ERROR record; a late result for a frame already closed is ignored. After ``abort`` (the
line gives up) every open frame, and every frame registered later, is closed at once. A stitch stage restarted after a crash resumes after
the last frame it released; frames that were registered with the crashed one only are found as
gaps before later frames and closed with an ERROR record, named from the crashed stage's
registration journal (handed to ``resume``) where it holds them.
"""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Collector:
    timeout_ns: int
    registered: dict[int, dict] = field(default_factory=dict)   # frame_id -> {source_name, capture_ns}
    done: dict[int, dict] = field(default_factory=dict)         # frame_id -> record, not yet released
    next_id: int = 0                                            # every frame before it is released
    # Registrations come in frame order on one socket, so a frame still unknown while later ones are
    # known was registered with a crashed stitch stage: closed after this, not the full timeout.
    gap_timeout_ns: int = 2_000_000_000
    gap_since_ns: int | None = None
    expected: int | None = None
    ignored_late: int = 0
    # What a crashed stitch stage had registered (its journal, read on resume): names the frames
    # closed as gaps. Not registrations: they wait for no result.
    recalled: dict[int, dict] = field(default_factory=dict)
    # frame_id -> (deadline_ns, reason): held by a crashed stage; ERROR at the deadline unless its
    # result comes first.
    held: dict[int, tuple[int, str]] = field(default_factory=dict)
    aborted: str | None = None
    last_activity_ns: int = 0

    def register(self, frame_id: int, source_name: str, capture_ns: int, now_ns: int = 0) -> None:
        self.last_activity_ns = max(self.last_activity_ns, now_ns)
        if frame_id >= self.next_id:
            self.registered.setdefault(frame_id, {"source_name": source_name, "capture_ns": capture_ns})
            if self.aborted is not None and frame_id not in self.done:
                self.done[frame_id] = self._error(frame_id, self.aborted)

    def add(self, frame_id: int, record: dict, now_ns: int = 0) -> None:
        self.last_activity_ns = max(self.last_activity_ns, now_ns)
        if frame_id < self.next_id or frame_id in self.done:
            self.ignored_late += 1
            return
        self.done[frame_id] = record
        self.held.pop(frame_id, None)

    def crash(self, frame_ids: list[int], reason: str, deadline_ns: int) -> int:
        """The frames a crashed stage held: ERROR at ``deadline_ns`` unless their result comes first
        (one sent just before the crash may still be on its way). Returns how many are open."""
        n = 0
        for fid in frame_ids:
            if fid >= self.next_id and fid not in self.done:
                self.held[fid] = (deadline_ns, reason)
                n += 1
        return n

    def abort(self, reason: str) -> int:
        """The line gives up: every open frame, and each one registered from now on, gets an ERROR
        record with ``reason``; frames known only from the journal are closed too."""
        self.aborted = reason
        n = self.fail_pending(reason)
        for fid in self.recalled:
            if fid >= self.next_id and fid not in self.done:
                self.done[fid] = self._error(fid, reason)
                n += 1
        return n

    def end(self, count: int) -> None:
        self.expected = count

    def source_gone(self) -> None:
        """The source process ended without announcing its count (killed): the stream ends after the
        last frame it registered. A count it did announce stands."""
        if self.expected is None:
            self.expected = max([*self.registered, *self.recalled, *self.done, self.next_id - 1], default=-1) + 1

    def _error(self, frame_id: int, reason: str) -> dict:
        info = self.registered.get(frame_id) or self.recalled.get(frame_id, {})
        return {"frame_id": frame_id, "source_name": info.get("source_name"), "capture_ns": info.get("capture_ns"),
                "verdict": "ERROR", "reason": reason, "score": None, "defects": []}

    def fail_pending(self, reason: str, before_ns: int | None = None) -> int:
        """ERROR for every registered frame without a result (captured before ``before_ns``)."""
        n = 0
        for fid, info in self.registered.items():
            if fid in self.done or fid < self.next_id:
                continue
            if before_ns is None or info["capture_ns"] <= before_ns:
                self.done[fid] = self._error(fid, reason)
                n += 1
        return n

    def expire(self, now_ns: int) -> int:
        n = self.fail_pending(f"no result within {self.timeout_ns / 1e9:.0f} s (frame lost in the pipeline)",
                              now_ns - self.timeout_ns)
        for fid, (deadline, reason) in list(self.held.items()):
            if now_ns >= deadline:
                del self.held[fid]
                if fid >= self.next_id and fid not in self.done:
                    self.done[fid] = self._error(fid, reason)
                    n += 1
        return n + self._close_gap(now_ns) + self._close_tail(now_ns)

    def _close_tail(self, now_ns: int) -> int:
        """With the stream's count known, frames up to it that this collector never heard of
        (registered with a stitch stage that crashed, their results lost with it) are closed once
        nothing has come for ``gap_timeout_ns``; at once after ``abort``."""
        if self.expected is None or self.next_id >= self.expected:
            return 0
        if any(fid >= self.next_id for known in (self.registered, self.done) for fid in known):
            return 0
        if self.aborted is None and now_ns - self.last_activity_ns <= self.gap_timeout_ns:
            return 0
        reason = self.aborted or "record lost: the stitch stage crashed with the frame in flight"
        for fid in range(self.next_id, self.expected):
            self.done[fid] = self._error(fid, reason)
        return self.expected - self.next_id

    def _close_gap(self, now_ns: int) -> int:
        """Frames before the first one this collector knows, unknown for ``gap_timeout_ns``:
        registered with a stitch stage that crashed, so nothing more will come for them."""
        if self.next_id in self.registered or self.next_id in self.done or not (self.registered or self.done):
            self.gap_since_ns = None  # the usual case, checked on every poll: no set built
            return 0
        if self.gap_since_ns is None:
            self.gap_since_ns = now_ns
            return 0
        if now_ns - self.gap_since_ns <= self.gap_timeout_ns:
            return 0
        first_known = min(fid for known in (self.registered, self.done) for fid in known)
        for fid in range(self.next_id, first_known):
            self.done[fid] = self._error(fid, "record lost: the stitch stage crashed with the frame in flight")
        self.gap_since_ns = None
        return first_known - self.next_id

    def resume(self, next_id: int, journal: dict[int, dict] | None = None) -> None:
        """A restarted stitch stage: frames before ``next_id`` were released by the one before;
        ``journal`` holds what that one registered (frame_id -> {source_name, capture_ns})."""
        self.next_id = next_id
        self.recalled = {fid: info for fid, info in (journal or {}).items() if fid >= next_id}
        self.held.clear()

    def release(self) -> list[dict]:
        """Records that can be emitted now, in frame order."""
        out = []
        while self.next_id in self.done:
            out.append(self.done.pop(self.next_id))
            self.registered.pop(self.next_id, None)
            self.recalled.pop(self.next_id, None)
            self.held.pop(self.next_id, None)
            self.next_id += 1
        return out

    @property
    def finished(self) -> bool:
        return self.expected is not None and self.next_id >= self.expected
