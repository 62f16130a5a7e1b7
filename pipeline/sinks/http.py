"""MES sink over HTTP: one JSON POST per part, in order, with retries and backoff.

Every record is first written to a spool folder (written to a temporary name, fsynced, renamed, the
folder fsynced: a power cut leaves the record or nothing), then a background thread sends spooled
records oldest first and deletes each one the MES accepted (2xx). When the MES is down or answers
5xx, 408, 425 or 429, records wait on disk, also across restarts, and go out in order once it is
back. The line never waits for the MES.

A record the MES refuses for good (another 4xx, or a redirect: a POST is never re-sent to another
URL) moves to ``SPOOL/dead-letter/`` with a ``.reason`` file beside it, and the next record goes out;
so does a spool file that cannot be read as a record. Nothing is deleted unsent.

Delivery is at least once: a POST whose answer was lost is sent again. Each one carries an
``Idempotency-Key`` header, ``RUN_ID/FRAME_ID`` (also in the body as ``run_id`` and ``frame_id``),
so the MES can recognise a record it already has. Extra headers (``headers_env``: an
``Authorization`` token, say) are read from the environment and never logged; the URL is printed
with its secrets replaced (pipeline.redact).
"""
from __future__ import annotations

import json
import os
import re
import ssl
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

from pipeline.log import get
from pipeline.redact import redact_text, redact_url
from pipeline.sinks.base import Sink

SPOOL_NAME = re.compile(r"^\d{12}\.json$")
DEAD_LETTER = "dead-letter"
RETRY_STATUS = {408, 425, 429}  # 4xx answers that mean "later", not "never"


class Refused(Exception):
    """The MES refused the record for good (or the spool file is not a record)."""


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, req, fp, code, msg, headers, newurl):  # noqa: D102 - a POST is not re-sent elsewhere
        return None


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def env_headers(headers_env: dict[str, str]) -> dict[str, str]:
    """``{header: ENV_NAME}`` -> ``{header: value}``; a missing variable is an error naming it."""
    missing = sorted(v for v in headers_env.values() if v not in os.environ)
    if missing:
        raise ValueError(f"sinks.http.headers_env: environment variable(s) {', '.join(missing)} not set; set them "
                         "(a service: in its EnvironmentFile) or remove the header")
    return {name: os.environ[var] for name, var in headers_env.items()}


class HttpSink(Sink):
    name = "http"

    def __init__(self, url: str, spool_dir: str | Path, timeout_s: float = 2.0, retries: int = 3,
                 backoff_s: float = 0.2, max_backoff_s: float = 10.0, headers_env: dict[str, str] | None = None,
                 ca_bundle: str = "") -> None:
        if not re.match(r"^https?://", url, re.IGNORECASE):
            raise ValueError(f"sinks.http.url {redact_url(url)!r}: expected an http:// or https:// URL")
        self.url, self.shown_url, self.timeout, self.retries = url, redact_url(url), timeout_s, retries
        self.backoff, self.max_backoff = backoff_s, max_backoff_s
        self.headers = env_headers(headers_env or {})
        handlers: list = [_NoRedirect()]
        if ca_bundle:
            if not Path(ca_bundle).is_file():
                raise FileNotFoundError(f"sinks.http.ca_bundle {ca_bundle}: no such file (a PEM file of CA certificates)")
            handlers.append(urllib.request.HTTPSHandler(context=ssl.create_default_context(cafile=ca_bundle)))
        self.opener = urllib.request.build_opener(*handlers)
        self.spool = Path(spool_dir)
        self.spool.mkdir(parents=True, exist_ok=True)
        (self.spool / DEAD_LETTER).mkdir(exist_ok=True)
        existing = self._pending()
        self.counter = int(existing[-1].stem) + 1 if existing else 0
        self.sent = self.dead = 0
        self.wake = threading.Event()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._sender, name="mes-sender", daemon=True)
        self.thread.start()

    def _pending(self) -> list[Path]:
        """Spooled records, oldest first; other files in the folder are left alone."""
        return sorted(p for p in self.spool.iterdir() if SPOOL_NAME.match(p.name))

    def handle(self, record, arrays, H) -> None:
        path = self.spool / f"{self.counter:012d}.json"
        tmp = path.with_suffix(".tmp")
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(json.dumps(record))
            f.flush()
            os.fsync(f.fileno())
        tmp.replace(path)
        _fsync_dir(self.spool)
        self.counter += 1
        self.wake.set()

    def _post(self, body: bytes, headers: dict[str, str]) -> None:
        req = urllib.request.Request(self.url, data=body, method="POST", headers={**self.headers, **headers})
        try:
            with self.opener.open(req, timeout=self.timeout) as resp:
                status = resp.status
        except urllib.error.HTTPError as exc:  # 3xx (not followed), 4xx, 5xx
            status = exc.code
        if 200 <= status < 300:
            return
        if status >= 500 or status in RETRY_STATUS:
            raise ConnectionError(f"the MES answered {status}")
        where = " (a redirect: a POST is not re-sent to another URL; set sinks.http.url to the final one)" \
            if 300 <= status < 400 else ""
        raise Refused(f"the MES answered {status}{where}")

    def _dead_letter(self, path: Path, reason: str) -> None:
        target = self.spool / DEAD_LETTER / path.name
        os.replace(path, target)
        target.with_suffix(".reason").write_text(reason + "\n")
        self.dead += 1
        get("http sink").warning(f"{path.name} moved to {target.parent} ({reason}); sending the next record")

    def _send_one(self, path: Path) -> bool:
        """True when the record left the spool (accepted, or set aside as refused)."""
        try:
            body = path.read_bytes()
            record = json.loads(body)
            if not isinstance(record, dict):
                raise ValueError("not a JSON object")
        except (OSError, ValueError) as exc:
            self._dead_letter(path, f"not a readable record: {exc}")
            return True
        headers = {"Content-Type": "application/json"}
        if record.get("run_id"):
            headers["Idempotency-Key"] = f"{record['run_id']}/{record.get('frame_id')}"
        delay = self.backoff
        for attempt in range(self.retries + 1):
            try:
                self._post(body, headers)
                path.unlink()
                self.sent += 1
                return True
            except Refused as exc:
                self._dead_letter(path, str(exc))
                return True
            except (urllib.error.URLError, OSError, ValueError) as exc:
                if attempt == self.retries:
                    get("http sink").warning(f"{self.shown_url} unreachable ({redact_text(str(exc))}); {path.name} stays "
                          "spooled")
                    return False
                if self.stop.wait(delay):
                    return False
                delay = min(delay * 2, self.max_backoff)
        return False

    def _sender(self) -> None:
        pause = self.backoff
        while not self.stop.is_set():
            try:
                pending = self._pending()
                if not pending:
                    self.wake.wait(0.5)
                    self.wake.clear()
                    continue
                if self._send_one(pending[0]):
                    pause = self.backoff
                    continue
            except Exception as exc:  # never die silently: say why, wait, go on
                get("http sink").warning(f"sender error ({redact_text(repr(exc))}); retrying")
            # MES down: keep order, wait, try the oldest again
            self.stop.wait(pause)
            pause = min(pause * 2, self.max_backoff)

    def pending(self) -> int:
        return len(self._pending())

    def close(self, drain_s: float = 5.0) -> None:
        end = time.monotonic() + drain_s
        while self.pending() and time.monotonic() < end and self.thread.is_alive():
            time.sleep(0.05)
        self.stop.set()
        self.wake.set()
        self.thread.join(timeout=self.timeout + 1)
