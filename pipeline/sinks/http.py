"""MES sink over HTTP: one JSON POST per part, in order, with retries and backoff.

Every record is first written to a spool folder (durable), then a background thread sends spooled
records oldest first and deletes each one the MES accepted. When the MES is down, records wait on
disk, also across restarts, and go out in order once it is back. The line never waits for the MES.

Delivery is at least once: a POST whose answer was lost is sent again. Each one carries an
``Idempotency-Key`` header, ``RUN_ID/FRAME_ID`` (also in the body as ``run_id`` and ``frame_id``),
so the MES can recognise a record it already has.
"""
from __future__ import annotations

import json
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

from pipeline.sinks.base import Sink


class HttpSink(Sink):
    name = "http"

    def __init__(self, url: str, spool_dir: str | Path, timeout_s: float = 2.0, retries: int = 3,
                 backoff_s: float = 0.2, max_backoff_s: float = 10.0) -> None:
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"sinks.http.url {url!r}: expected an http:// or https:// URL")
        self.url, self.timeout, self.retries = url, timeout_s, retries
        self.backoff, self.max_backoff = backoff_s, max_backoff_s
        self.spool = Path(spool_dir)
        self.spool.mkdir(parents=True, exist_ok=True)
        existing = sorted(self.spool.glob("*.json"))
        self.counter = int(existing[-1].stem) + 1 if existing else 0
        self.sent = 0
        self.wake = threading.Event()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._sender, name="mes-sender", daemon=True)
        self.thread.start()

    def handle(self, record, arrays, H) -> None:
        path = self.spool / f"{self.counter:012d}.json"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(record))
        tmp.replace(path)
        self.counter += 1
        self.wake.set()

    def _post(self, body: bytes, headers: dict[str, str]) -> None:
        req = urllib.request.Request(self.url, data=body, method="POST", headers=headers)
        with urllib.request.urlopen(req, timeout=self.timeout) as resp:
            if resp.status >= 300:
                raise urllib.error.HTTPError(self.url, resp.status, "unexpected status", resp.headers, None)

    def _send_one(self, path: Path) -> bool:
        body = path.read_bytes()
        headers = {"Content-Type": "application/json"}
        record = json.loads(body)
        if record.get("run_id"):
            headers["Idempotency-Key"] = f"{record['run_id']}/{record['frame_id']}"
        delay = self.backoff
        for attempt in range(self.retries + 1):
            try:
                self._post(body, headers)
                path.unlink()
                self.sent += 1
                return True
            except (urllib.error.URLError, OSError, ValueError) as exc:
                if attempt == self.retries:
                    print(f"http sink: {self.url} unreachable ({exc}); {path.name} stays spooled", file=sys.stderr)
                    return False
                if self.stop.wait(delay):
                    return False
                delay = min(delay * 2, self.max_backoff)
        return False

    def _sender(self) -> None:
        pause = self.backoff
        while not self.stop.is_set():
            pending = sorted(self.spool.glob("*.json"))
            if not pending:
                self.wake.wait(0.5)
                self.wake.clear()
                continue
            if self._send_one(pending[0]):
                pause = self.backoff
            else:  # MES down: keep order, wait, try the oldest again
                self.stop.wait(pause)
                pause = min(pause * 2, self.max_backoff)

    def pending(self) -> int:
        return len(list(self.spool.glob("*.json")))

    def close(self, drain_s: float = 5.0) -> None:
        end = time.monotonic() + drain_s
        while self.pending() and time.monotonic() < end and self.thread.is_alive():
            time.sleep(0.05)
        self.stop.set()
        self.wake.set()
        self.thread.join(timeout=self.timeout + 1)
