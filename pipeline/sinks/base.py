"""The sink interface and registry: every result record goes to each enabled sink."""
from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np


class Sink(ABC):
    name = ""

    @abstractmethod
    def handle(self, record: dict, arrays: dict[str, np.ndarray], H: np.ndarray | None) -> None:
        """Deliver one record. Must not block the line for long; must not raise for delivery trouble."""

    def tick(self) -> None:
        """Called regularly (heartbeats, retries)."""

    def close(self) -> None:
        """Flush and release resources."""


def build_sinks(cfg, results_path: str | None) -> list[Sink]:
    from pipeline.sinks.http import HttpSink
    from pipeline.sinks.modbus import ModbusSink
    from pipeline.sinks.overlays import OverlaySink
    from pipeline.sinks.results_log import ResultsLog

    sinks: list[Sink] = []
    if cfg.sinks.overlays_dir:
        sinks.append(OverlaySink(cfg.sinks.overlays_dir, cfg.sinks.save_masks))
    m = cfg.sinks.modbus
    if m.enabled:
        sinks.append(ModbusSink(m.host, m.port, m.unit, m.verdict_coil, m.defect_count_register,
                                m.sequence_register, m.heartbeat_register, m.heartbeat_s, m.timeout_s,
                                m.reject_verdicts, m.verdict_register))
    h = cfg.sinks.http
    if h.enabled:
        sinks.append(HttpSink(h.url, h.spool_dir, h.timeout_s, h.retries, h.backoff_s))
    if results_path:  # last: a record in the results file has been handled by every other sink
        sinks.append(ResultsLog(results_path))
    return sinks
