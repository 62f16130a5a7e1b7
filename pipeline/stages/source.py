"""Source stage: reads frames, registers each with the stitch stage, sends it to preprocessing.

File, dir and replay sources block on back pressure and never drop. Live sources keep a small
queue and drop the oldest frame when it is full; each drop becomes a ``DROPPED`` record. A live
source is read on a thread of its own, so that queued frames go out as soon as preprocessing takes
them, not only when the camera delivers its next frame.
"""
from __future__ import annotations

import argparse
import collections
import os
import queue as queue_mod
import sys
import threading
import time
from collections.abc import Iterator

import zmq

from pipeline import messages
from pipeline.log import get
from pipeline.journal import SOURCE_JOURNAL, FrameJournal
from pipeline.sources import SOURCE_ENV, Source, SourceItem, open_source
from pipeline.stages._common import POLL_MS, Stage, read_holding, run_stage, stage_parser
from pipeline.transport import StatusReporter, make_socket, send


# Exit code of a source that failed (could not be opened, or a camera lost for longer than
# source.reconnect_s): the frames read before were passed on and the end of the stream announced, so
# the line flushes them; the supervisor does not restart it.
SOURCE_FAILED = 3
# While live frames wait in the stage's queue, it retries sending this often between source frames.
LIVE_RETRY_S = 0.002
# Once stopped, frames already read are passed on for this long at most (the rest of the line may be
# stopping, or stuck); what is still queued then gets an ERROR record, never silence.
STOP_DRAIN_S = 5.0
_END = object()


def wait_handed_over(stage: Stage, last_fid: int, limit_s: float) -> bool:
    """Wait until preprocessing has taken frame ``last_fid``, the last one sent (its holding note
    names the frame it took last; frames arrive in order), for at most ``limit_s`` and not once the
    stage is stopping. Closing the socket earlier discards what still waits in ZeroMQ's queues once
    their linger has run out: under load, the last frames of a replay were lost that way and became
    ERROR records after the frame timeout. Returns whether it was taken."""
    end = time.monotonic() + limit_s
    while not stage.stopping:
        if max(read_holding(stage.run_dir, "preprocess"), default=-1) >= last_fid:
            return True
        if time.monotonic() >= end:
            return False
        time.sleep(POLL_MS / 1000)
    return False


class _Reader(threading.Thread):
    """Reads a live source ahead on its own thread (a camera read or a paced replay blocks until the
    next frame is due); the stage thread takes the items from ``items`` and keeps every socket."""

    def __init__(self, source: Source) -> None:
        super().__init__(name="source-reader", daemon=True)
        self.source, self.items, self.stop = source, queue_mod.SimpleQueue(), threading.Event()

    def run(self) -> None:
        try:
            for item in self.source:
                if self.stop.is_set():
                    break
                self.items.put(item)
        except BaseException as exc:  # handed to the stage thread, which raises it as its own
            self.items.put(exc)
        finally:
            self.items.put(_END)


def run(stage: Stage, uri: str) -> int:
    cfg = stage.cfg
    verdict = make_socket(stage.ctx, zmq.PUSH, stage.ep("verdict"), bind=False, hwm=10000)
    # Every frame read and the count at the end, for a stitch stage restarted after a crash and for
    # run_pipeline's last flush: whatever dies, each frame read can still be given its record.
    journal = FrameJournal(stage.run_dir / SOURCE_JOURNAL, resume=False)
    closed = threading.Event()  # set on stop: a camera that is being waited for is waited for no longer
    stage.on_stop.append(closed.set)
    try:
        source = open_source(uri, cfg.source, stop=closed)
    except Exception as exc:  # e.g. a camera that did not appear within source.reconnect_s
        get("source").info(f"{exc}")
        journal.end(0)
        journal.close()
        send(verdict, messages.end(0))
        verdict.close()
        return SOURCE_FAILED
    # The backlog stays here, not in ZeroMQ buffers where frames would silently age: a live source
    # drops its oldest queued frame, a file source simply reads the next frame later.
    frames = make_socket(stage.ctx, zmq.PUSH, stage.ep("frames"), bind=False, hwm=1 if source.live else 2)
    status = StatusReporter(stage.ctx, stage.ep("status"), "source")
    queue: collections.deque = collections.deque()
    count = 0

    def register(fid: int, name: str, capture_ns: int) -> None:
        journal.add(fid, capture_ns, name)
        send(verdict, messages.register(fid, name, capture_ns))

    def result(fid: int, name: str, capture_ns: int, verdict_name: str, reason: str, camera_lost: bool = False) -> None:
        ids = {"frame_id": fid, "source_name": name, "capture_ns": capture_ns}
        send(verdict, messages.result(ids, verdict_name, reason, camera_lost))

    stopped_at: list[float] = []
    last_sent = -1  # the frame sent to preprocessing last
    stage.on_stop.append(lambda: stopped_at.append(time.monotonic()))

    def drain(block: bool) -> None:
        """Pass queued frames on; with ``block``, wait for preprocessing to take them, but once the
        stage is stopping for STOP_DRAIN_S at most."""
        nonlocal last_sent
        while queue:
            header, image = queue[0]
            if block:
                while not frames.poll(POLL_MS, zmq.POLLOUT):
                    if stopped_at and time.monotonic() - stopped_at[0] > STOP_DRAIN_S:
                        return
            try:
                send(frames, header, {"image": image}, flags=zmq.NOBLOCK)
            except zmq.Again:
                if not block:
                    return
                continue
            queue.popleft()
            last_sent = header["frame_id"]

    def items() -> Iterator[SourceItem]:
        """The source's items; for a live source read ahead on a thread, with queued frames sent
        while the next one is awaited."""
        if not source.live:
            yield from source
            return
        reader = _Reader(source)
        reader.start()
        try:
            while not stage.stopping:
                try:
                    item = reader.items.get(timeout=LIVE_RETRY_S if queue else POLL_MS / 1000)
                except queue_mod.Empty:
                    drain(block=False)
                    continue
                if item is _END:
                    return
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            reader.stop.set()
            reader.join(timeout=2.0)

    failure: Exception | None = None
    try:
        try:
            for item in items():
                if stage.stopping:
                    break
                capture_ns = time.monotonic_ns()
                fid = count
                count += 1
                register(fid, item.name, capture_ns)
                status.add(frames_in=1)
                if item.frame is None:
                    result(fid, item.name, capture_ns, "ERROR", item.reason, item.camera_lost)
                    continue
                header = messages.frame(fid, item.name, capture_ns, item.recorded_ns)
                queue.append((header, item.frame))
                if source.live:
                    while len(queue) > cfg.source.camera.queue:
                        old, _ = queue.popleft()
                        result(old["frame_id"], old["source_name"], old["capture_ns"], "DROPPED",
                               f"inspection behind the camera; oldest of {cfg.source.camera.queue + 1} queued frames dropped")
                        status.add(processed=0, dropped=1)
                    drain(block=False)
                else:
                    drain(block=True)
        except Exception as exc:  # the source failed: every frame read so far still gets its record
            failure = exc
        drain(block=True)
        for header, _ in queue:  # the line stopped before they could be passed on
            result(header["frame_id"], header["source_name"], header["capture_ns"], "ERROR",
                   "not inspected: the line stopped before the frame reached preprocessing")
        journal.end(count)
        send(verdict, messages.end(count))
        if last_sent >= 0 and not wait_handed_over(stage, last_sent, cfg.frame_timeout_s) and not stage.stopping:
            get("source").warning(f"preprocessing did not take frame {last_sent} within {cfg.frame_timeout_s:.0f} s "
                                  "(frame_timeout_s); the frames it has not taken get an ERROR record")
    finally:
        journal.close()
        source.close()
        status.close()
        frames.close()
        verdict.close()
    if failure is not None:
        get("source").info(f"{failure}")
        return SOURCE_FAILED
    return 0


def main(argv: list[str] | None = None) -> int:
    p = stage_parser("source")
    p.add_argument("--source", help=f"the source URI (default: the environment variable {SOURCE_ENV}, as "
                   "run_pipeline passes it, so that a camera's password stays off the command line)")

    def go(stage: Stage, a: argparse.Namespace) -> int:
        uri = a.source or os.environ.get(SOURCE_ENV)
        if not uri:
            p.error(f"--source or the environment variable {SOURCE_ENV} is required")
        return run(stage, uri)

    return run_stage(p, argv, go)


if __name__ == "__main__":
    sys.exit(main())
