"""Real servers for sink tests: a pymodbus Modbus TCP server and a local HTTP server, on loopback."""
from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ModbusServer:
    """pymodbus ModbusTcpServer in its own thread and event loop."""

    def __init__(self, port: int) -> None:
        from pymodbus.datastore import ModbusDeviceContext, ModbusSequentialDataBlock, ModbusServerContext
        from pymodbus.server import ModbusTcpServer

        device = ModbusDeviceContext(co=ModbusSequentialDataBlock(1, [0] * 64), hr=ModbusSequentialDataBlock(1, [0] * 64))
        self.context = ModbusServerContext(devices={1: device}, single=False)
        self.port = port
        self.loop = asyncio.new_event_loop()
        self.ready = threading.Event()
        self.server = None

        async def serve() -> None:
            self.server = ModbusTcpServer(self.context, address=("127.0.0.1", port))
            self.ready.set()
            await self.server.serve_forever()

        self.thread = threading.Thread(target=lambda: self.loop.run_until_complete(serve()), daemon=True)
        self.thread.start()
        self.ready.wait(5)
        self._wait_listening(port, timeout_s=10.0)

    @staticmethod
    def _wait_listening(port: int, timeout_s: float) -> None:
        """serve_forever binds the socket only after it starts running, so a client that connects at once
        can be refused (seen in CI): wait until the port takes a TCP connection."""
        end = time.monotonic() + timeout_s
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                    return
            except OSError:
                if time.monotonic() > end:
                    raise RuntimeError(f"pymodbus test server on 127.0.0.1:{port} did not start listening in {timeout_s} s")
                time.sleep(0.02)

    def stop(self) -> None:
        fut = asyncio.run_coroutine_threadsafe(self.server.shutdown(), self.loop)
        fut.result(5)
        self.thread.join(5)


class MesServer:
    """Records every JSON POST body it accepts, in arrival order. ``answers`` maps a frame_id to
    the status to answer for it instead of 201 (a 3xx with a Location header); ``requests`` logs
    (method, path, headers) of every request, GETs too."""

    def __init__(self, port: int, answers: dict[int, int] | None = None) -> None:
        received = self.received = []
        keys = self.idempotency_keys = []
        requests = self.requests = []
        answers = self.answers = dict(answers or {})

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers["Content-Length"]))
                requests.append(("POST", self.path, dict(self.headers)))
                record = json.loads(body)
                status = answers.get(record.get("frame_id"), 201)
                if status == 201:
                    received.append(record)
                    keys.append(self.headers.get("Idempotency-Key"))
                self.send_response(status)
                if 300 <= status < 400:
                    self.send_header("Location", "/elsewhere")
                self.send_header("Content-Length", "0")
                self.end_headers()

            def do_GET(self) -> None:  # noqa: N802
                requests.append(("GET", self.path, dict(self.headers)))
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


class BlackHolePlc:
    """A PLC that hangs: it accepts TCP connections and reads what is sent, but never answers (a
    Modbus server stopped, not closed)."""

    def __init__(self, port: int) -> None:
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", port))
        self.sock.listen(16)
        self.clients: list[socket.socket] = []
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        self.sock.settimeout(0.1)
        while not self.stopped.is_set():
            try:
                conn, _ = self.sock.accept()
                conn.setblocking(False)
                self.clients.append(conn)
            except OSError:
                pass
            for c in self.clients:
                try:
                    c.recv(4096)
                except OSError:
                    pass

    def stop(self) -> None:
        self.stopped.set()
        self.thread.join(5)
        for c in self.clients:
            c.close()
        self.sock.close()
