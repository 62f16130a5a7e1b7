"""The sink interface and registry: every result record goes to each enabled sink.

A sink that may block (a PLC that hangs, a slow disk for overlay images) says so (``blocking``)
and runs on a thread and queue of its own (:class:`QueuedSink`), so it never delays another sink
and never the results log, which the sinks stage writes itself, last, on its own thread.
"""
from __future__ import annotations

from pipeline.log import get
import queue
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable

import numpy as np

# Records queued for one blocking sink before the oldest is given up (and reported undelivered).
SINK_QUEUE = 10_000
TICK_S = 0.1


class Sink(ABC):
    name = ""
    blocking = False  # True: may wait on the network or a slow disk; run on its own thread

    @abstractmethod
    def handle(self, record: dict, arrays: dict[str, np.ndarray], H: np.ndarray | None) -> None:
        """Deliver one record. Must not raise for delivery trouble."""

    def tick(self) -> None:
        """Called regularly (heartbeats, retries)."""

    def close(self) -> None:
        """Flush and release resources."""


Report = Callable[[int, str, str], None]  # (frame_id, sink name, why it was not delivered)


class QueuedSink(Sink):
    """Runs ``sink`` on a thread of its own: ``handle`` only queues. A full queue gives up its
    oldest record (reported undelivered); ``close`` waits up to ``drain_s`` for the queue."""

    def __init__(self, sink: Sink, report: Report, max_queue: int = SINK_QUEUE) -> None:
        self.sink, self.report = sink, report
        self.name = sink.name
        self.items: queue.Queue = queue.Queue(max_queue)
        self.thread = threading.Thread(target=self._run, name=f"sink-{sink.name}", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while True:
            try:
                item = self.items.get(timeout=TICK_S)
            except queue.Empty:
                item = ()
            try:
                if item is None:
                    return
                if item:
                    self.sink.handle(*item)
                self.sink.tick()
            except Exception as exc:  # a sink's own bug must not end its thread silently
                if item:
                    self.report(item[0]["frame_id"], self.name, f"sink error: {exc!r}")
                get(f"{self.name} sink").info(f"{exc!r}")

    def handle(self, record, arrays, H) -> None:
        while True:
            try:
                self.items.put_nowait((record, arrays, H))
                return
            except queue.Full:
                try:
                    old = self.items.get_nowait()
                except queue.Empty:
                    continue
                if old:
                    self.report(old[0]["frame_id"], self.name, f"not delivered: {SINK_QUEUE} records queued "
                                "behind it (the receiver is too slow or unreachable)")

    def backlog(self) -> int:
        return self.items.qsize()

    def close(self, drain_s: float = 5.0) -> None:
        try:
            self.items.put(None, timeout=drain_s)
        except queue.Full:
            pass
        self.thread.join(timeout=drain_s)
        if self.thread.is_alive():
            get(f"{self.name} sink").warning(f"{self.backlog()} record(s) not delivered at stop")
        self.sink.close()


def build_sinks(cfg, report: Report | None = None) -> list[Sink]:
    """The network and image sinks the config enables (not the results log: the sinks stage owns
    it), the blocking ones each behind a QueuedSink."""
    from pipeline.sinks.http import HttpSink
    from pipeline.sinks.modbus import ModbusSink
    from pipeline.sinks.overlays import OverlaySink

    report = report or (lambda frame_id, sink, reason: None)
    sinks: list[Sink] = []
    h = cfg.sinks.http
    if h.enabled:  # spooling is a local write; the sending has its own thread already
        sinks.append(HttpSink(h.url, h.spool_dir, h.timeout_s, h.retries, h.backoff_s, headers_env=h.headers_env,
                              ca_bundle=h.ca_bundle))
    m = cfg.sinks.modbus
    if m.enabled:
        sinks.append(ModbusSink(m.host, m.port, m.unit, m.verdict_coil, m.result_register, m.heartbeat_register,
                                m.heartbeat_s, m.timeout_s, m.reject_verdicts, m.max_age_s, report))
    if cfg.sinks.overlays_dir:
        sinks.append(OverlaySink(cfg.sinks.overlays_dir, cfg.sinks.save_masks, _image_threshold(cfg)))
    return [QueuedSink(s, report) if s.blocking else s for s in sinks]


def _image_threshold(cfg) -> float | None:
    """The line's image threshold (the model's when the config leaves it null), for the overlays'
    legend; None when the model folder cannot be read (the inference stage reports that)."""
    if cfg.decision.image_threshold is not None:
        return float(cfg.decision.image_threshold)
    try:
        from engines.artifact import ModelMeta

        return float(ModelMeta.load(cfg.inference.model).image_threshold)
    except (OSError, ValueError, KeyError):
        return None
