"""PLC sink over Modbus TCP (pymodbus client): a reject coil and one block of holding registers per
part, plus a heartbeat register.

Each part is written as one unit, in two requests, and nothing after a failure:

1. the reject coil (``verdict_coil``): 1 when the verdict is one of ``reject_verdicts`` (by default
   NG, and ERROR and DROPPED too: a part that was not inspected must not pass as good);
2. the result block, one ``write_registers`` request from ``result_register``:
   ``+0`` verdict code (``VERDICT_CODES``), ``+1`` defect count, ``+2`` missed results, ``+3``
   sequence. The sequence is the last register of the block; its change tells the PLC that a
   new, complete result is there.

The sequence counts parts, so a part whose result did not reach the PLC leaves a gap in it; the
missed-results register counts every such part since the line started (a write that failed, or
a verdict older than ``max_age_s`` when its turn came: written late, it would sort the wrong part),
so after an outage the PLC can tell how many it missed. Each miss is also reported to the sinks
stage (``report``), which writes it to the results log.

The heartbeat register counts up every ``heartbeat_s`` and pauses from a "camera lost" record until
the next frame arrives: the line runs but sees nothing, and a PLC that watches it can stop the belt.

This sink blocks on the network; the sinks stage runs it on a thread and queue of its own
(``blocking``), so a PLC that hangs delays no other sink.
"""
from __future__ import annotations

import time
from collections.abc import Callable

from pipeline.log import get
from pipeline.config import VERDICTS
from pipeline.sinks.base import Sink

VERDICT_CODES = {v: i + 1 for i, v in enumerate(VERDICTS)}  # OK 1, NG 2, NO_PART 3, ERROR 4, DROPPED 5
BLOCK = ("verdict", "defect_count", "missed", "sequence")   # the result block, in register order


class ModbusSink(Sink):
    name = "modbus"
    blocking = True

    def __init__(self, host: str, port: int, unit: int = 1, verdict_coil: int = 0, result_register: int = 0,
                 heartbeat_register: int = 4, heartbeat_s: float = 1.0, timeout_s: float = 1.0,
                 reject_verdicts: tuple[str, ...] | list[str] = ("NG", "ERROR", "DROPPED"), max_age_s: float = 3.0,
                 report: Callable[[int, str, str], None] | None = None) -> None:
        from pymodbus.client import ModbusTcpClient

        self.client = ModbusTcpClient(host, port=port, timeout=timeout_s, retries=0, reconnect_delay=0)
        self.unit = unit
        self.coil, self.block_reg, self.hb_reg = verdict_coil, result_register, heartbeat_register
        self.reject = frozenset(reject_verdicts)
        self.heartbeat_s, self.max_age_ns = heartbeat_s, int(max_age_s * 1e9)
        self.report = report or (lambda frame_id, sink, reason: None)
        self.heartbeat = 0
        self.last_beat = 0.0
        self.sequence = 0
        self.missed = 0
        self.failures = 0
        self.blind = False  # the camera is lost: no heartbeat until a frame comes again

    def _write(self, fn: Callable[[], object]) -> str:
        """'' when the PLC took the write, else why not."""
        try:
            if not self.client.connected and not self.client.connect():
                raise ConnectionError("cannot connect")
            response = fn()
            if response is None or response.isError():
                raise ConnectionError(f"PLC answered with an error ({response})")
            return ""
        except Exception as exc:  # network trouble: count it, never stop the line
            self.failures += 1
            if self.failures in (1, 10, 100) or self.failures % 1000 == 0:
                get("modbus sink").warning(f"write failed ({exc}); {self.failures} failures so far")
            self.client.close()
            return str(exc) or type(exc).__name__

    def _miss(self, record: dict, reason: str) -> None:
        self.missed += 1
        self.report(record["frame_id"], self.name, reason)

    def handle(self, record, arrays, H) -> None:
        self.blind = bool(record.get("camera_lost"))
        self.sequence = (self.sequence + 1) & 0xFFFF
        capture_ns = record.get("capture_ns")
        if capture_ns is not None and time.monotonic_ns() - capture_ns > self.max_age_ns:
            age = (time.monotonic_ns() - capture_ns) / 1e9
            self._miss(record, f"not written: the verdict was {age:.1f} s old (sinks.modbus.max_age_s "
                               f"{self.max_age_ns / 1e9:g}); the PLC was slow or unreachable")
            return
        reject = record["verdict"] in self.reject
        why = self._write(lambda: self.client.write_coil(self.coil, reject, device_id=self.unit))
        if why:
            self._miss(record, f"reject coil not written: {why}")
            return
        block = [VERDICT_CODES.get(record["verdict"], 0), min(len(record.get("defects") or []), 0xFFFF),
                 self.missed & 0xFFFF, self.sequence]
        why = self._write(lambda: self.client.write_registers(self.block_reg, block, device_id=self.unit))
        if why:
            self._miss(record, f"result block not written: {why}")

    def tick(self) -> None:
        if self.blind:
            return
        now = time.monotonic()
        if now - self.last_beat >= self.heartbeat_s:
            self.last_beat = now
            self.heartbeat = (self.heartbeat + 1) & 0xFFFF
            self._write(lambda: self.client.write_register(self.hb_reg, self.heartbeat, device_id=self.unit))

    def close(self) -> None:
        self.client.close()
