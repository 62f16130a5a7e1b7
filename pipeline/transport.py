"""ZeroMQ sockets with the reliability settings in one place: linger, high-water marks, timeouts."""
from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import zmq

from pipeline import messages, wire

LINGER_MS = 2000   # on close, try this long to deliver queued messages, then give up (never hang)
HWM = 64           # messages queued per peer before a sender blocks (file sources) or drops (camera)


def endpoint(template: str, run_dir: str | Path) -> str:
    return template.replace("{run}", str(Path(run_dir).resolve()))


def make_socket(ctx: zmq.Context, kind: int, address: str, bind: bool, hwm: int = HWM) -> zmq.Socket:
    sock = ctx.socket(kind)
    sock.setsockopt(zmq.LINGER, LINGER_MS)
    sock.setsockopt(zmq.SNDHWM, hwm)
    sock.setsockopt(zmq.RCVHWM, hwm)
    sock.setsockopt(zmq.MAXMSGSIZE, wire.MAX_PART_BYTES)  # a peer sending a larger part is disconnected
    if kind == zmq.PUSH:
        sock.setsockopt(zmq.IMMEDIATE, 1)  # queue only to live peers, so a dead worker holds no frames
    if address.startswith("ipc://"):
        Path(address[len("ipc://"):]).parent.mkdir(parents=True, exist_ok=True)
    (sock.bind if bind else sock.connect)(address)
    return sock


def send(sock: zmq.Socket, header: dict, arrays: dict[str, np.ndarray] | None = None, flags: int = 0) -> None:
    sock.send_multipart(wire.encode(header, arrays), flags=flags, copy=False)


def send_nowait(sock: zmq.Socket, header: dict, arrays: dict[str, np.ndarray] | None = None) -> bool:
    """Send unless the peer is gone or its queue is full (never blocks); False when not sent."""
    try:
        send(sock, header, arrays, flags=zmq.NOBLOCK)
        return True
    except zmq.Again:
        return False


def send_within(sock: zmq.Socket, header: dict, timeout_ms: int, arrays: dict[str, np.ndarray] | None = None) -> bool:
    """Send once the peer can take it, waiting at most ``timeout_ms`` (a socket just connected, or a
    peer restarting); False when not sent. Never blocks longer."""
    if not sock.poll(timeout_ms, zmq.POLLOUT):
        return False
    return send_nowait(sock, header, arrays)


def recv(sock: zmq.Socket, timeout_ms: int) -> tuple[dict, dict[str, np.ndarray]] | None:
    """One decoded and checked message, or None on timeout. Raises wire.WireError (a
    messages.MessageError when the kind's fields are wrong) for a malformed message, after taking
    it off the socket, so the caller can count it and go on."""
    if not sock.poll(timeout_ms, zmq.POLLIN):
        return None
    frames = sock.recv_multipart(copy=False)
    header, arrays = wire.decode(frames)
    messages.check(header, arrays)
    return header, arrays


class StatusReporter:
    """Sends a small status message to the supervisor at most every ``period_s`` (never blocks)."""

    def __init__(self, ctx: zmq.Context, address: str, stage: str, period_s: float = 0.5) -> None:
        self.sock = make_socket(ctx, zmq.PUSH, address, bind=False, hwm=16)
        self.stage, self.period = stage, period_s
        self.last = 0.0
        self.counters: dict[str, Any] = {"processed": 0, "busy_ms": 0.0}

    def add(self, processed: int = 1, busy_ms: float = 0.0, **extra: Any) -> None:
        self.counters["processed"] += processed
        self.counters["busy_ms"] += busy_ms
        for k, v in extra.items():
            self.counters[k] = self.counters.get(k, 0) + v if isinstance(v, (int, float)) else v
        self.flush()

    def flush(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self.last < self.period:
            return
        self.last = now
        try:
            send(self.sock, messages.status(self.stage, os.getpid(), self.counters), flags=zmq.NOBLOCK)
        except zmq.Again:
            pass  # the supervisor is busy or gone; status is best-effort, work is not

    def close(self) -> None:
        self.flush(force=True)
        self.sock.close()
