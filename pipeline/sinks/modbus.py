"""PLC sink over Modbus TCP (pymodbus client): reject coil, verdict, defect count, sequence and
heartbeat registers. A PLC that is down is retried on the next record; the line never waits for it.

The coil is 1 when the verdict is one of ``reject_verdicts``: by default NG, and ERROR and DROPPED
too, since a part that was not inspected must not pass as good. The verdict register tells the
PLC which it was (``VERDICT_CODES``). The heartbeat pauses from a "camera lost" record until the
next frame arrives: the line runs but sees nothing, and a PLC that watches the heartbeat can stop
the belt."""
from __future__ import annotations

import sys
import time

from pipeline.config import VERDICTS
from pipeline.sinks.base import Sink

VERDICT_CODES = {v: i + 1 for i, v in enumerate(VERDICTS)}  # OK 1, NG 2, NO_PART 3, ERROR 4, DROPPED 5


class ModbusSink(Sink):
    name = "modbus"

    def __init__(self, host: str, port: int, unit: int, verdict_coil: int, defect_count_register: int,
                 sequence_register: int, heartbeat_register: int, heartbeat_s: float = 1.0, timeout_s: float = 1.0,
                 reject_verdicts: tuple[str, ...] | list[str] = ("NG", "ERROR", "DROPPED"), verdict_register: int = -1) -> None:
        from pymodbus.client import ModbusTcpClient

        self.client = ModbusTcpClient(host, port=port, timeout=timeout_s, retries=0, reconnect_delay=0)
        self.unit = unit
        self.coil, self.count_reg, self.seq_reg, self.hb_reg = (verdict_coil, defect_count_register,
                                                                 sequence_register, heartbeat_register)
        self.reject = frozenset(reject_verdicts)
        self.verdict_reg = verdict_register
        self.heartbeat_s = heartbeat_s
        self.heartbeat = 0
        self.last_beat = 0.0
        self.sequence = 0
        self.failures = 0
        self.blind = False  # the camera is lost: no heartbeat until a frame comes again

    def _ok(self, response) -> bool:
        return response is not None and not response.isError()

    def _write(self, fn) -> bool:
        try:
            if not self.client.connected and not self.client.connect():
                raise ConnectionError("cannot connect")
            if not self._ok(fn()):
                raise ConnectionError("PLC returned an error")
            return True
        except Exception as exc:  # network trouble: count it, never stop the line
            self.failures += 1
            if self.failures in (1, 10, 100) or self.failures % 1000 == 0:
                print(f"modbus sink: write failed ({exc}); {self.failures} failures so far", file=sys.stderr)
            self.client.close()
            return False

    def handle(self, record, arrays, H) -> None:
        self.blind = bool(record.get("camera_lost"))
        self.sequence = (self.sequence + 1) & 0xFFFF
        reject = record["verdict"] in self.reject
        n = min(len(record.get("defects") or []), 0xFFFF)
        # Count and verdict first, then the coil the PLC acts on, then the sequence that tells it a new
        # part arrived.
        self._write(lambda: self.client.write_register(self.count_reg, n, device_id=self.unit))
        if self.verdict_reg >= 0:
            code = VERDICT_CODES.get(record["verdict"], 0)
            self._write(lambda: self.client.write_register(self.verdict_reg, code, device_id=self.unit))
        self._write(lambda: self.client.write_coil(self.coil, reject, device_id=self.unit))
        self._write(lambda: self.client.write_register(self.seq_reg, self.sequence, device_id=self.unit))

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
