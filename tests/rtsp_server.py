"""A real RTSP server for source tests: RTSP 1.0 on loopback, Motion-JPEG frames in RTP (RFC 2435)
interleaved on the RTSP TCP connection, as an IP camera serves them.

It answers OPTIONS, DESCRIBE, SETUP (TCP interleaved only; a UDP request gets 461, as many cameras
answer behind a firewall), PLAY, GET_PARAMETER (keep-alive) and TEARDOWN. After PLAY it sends the
given frames in a loop at ``fps``. ``drop_clients()`` cuts every connection, as a camera reboot or a
pulled cable does; ``stop()`` also closes the listening socket. Frames are BGR uint8 with both sides
multiples of 8 (RFC 2435 sends the size in units of 8 px).

Standard library and OpenCV only (for JPEG encoding), so tests can run it in a thread.
"""
from __future__ import annotations

import socket
import struct
import threading
import time

import cv2
import numpy as np

PAYLOAD_JPEG = 26      # RTP static payload type for JPEG (RFC 3551)
CLOCK_HZ = 90_000      # RTP video clock
MAX_FRAGMENT = 1400    # scan bytes per RTP packet


def jpeg_parts(jpeg: bytes) -> tuple[bytes, bytes, int, int, int]:
    """Baseline JPEG -> (luma and chroma quantisation tables, 64 bytes each in zig-zag order as in
    DQT; scan data up to EOI; width; height; RFC 2435 type: 0 for 4:2:2, 1 for 4:2:0)."""
    tables: dict[int, bytes] = {}
    width = height = kind = -1
    i = 2
    while i < len(jpeg):
        if jpeg[i] != 0xFF:
            raise ValueError(f"JPEG marker expected at byte {i}")
        marker = jpeg[i + 1]
        length = struct.unpack(">H", jpeg[i + 2:i + 4])[0]
        body = jpeg[i + 4:i + 2 + length]
        if marker == 0xDB:  # DQT: one or more 8-bit tables
            j = 0
            while j < len(body):
                if body[j] >> 4:
                    raise ValueError("16-bit quantisation tables are not allowed by RFC 2435")
                tables[body[j] & 0x0F] = body[j + 1:j + 65]
                j += 65
        elif marker == 0xC0:  # SOF0
            height, width = struct.unpack(">HH", body[1:5])
            sampling = body[7]  # luma H/V factors
            kind = {0x21: 0, 0x22: 1}[sampling]
        elif marker == 0xDD:
            raise ValueError("restart intervals are not supported by this test server")
        elif marker == 0xDA:  # SOS: the scan runs to the EOI marker at the end
            scan = jpeg[i + 2 + length:]
            if scan[-2:] != b"\xff\xd9":
                raise ValueError("JPEG does not end with EOI")
            return tables[0] + tables[1], scan[:-2], width, height, kind
        i += 2 + length
    raise ValueError("JPEG has no scan")


def rtp_packets(jpeg: bytes, seq: int, timestamp: int, ssrc: int = 0x7E57CA11) -> list[bytes]:
    """One JPEG frame as RTP/JPEG packets (RFC 2435, Q=255: the tables travel in the first packet)."""
    qtables, scan, width, height, kind = jpeg_parts(jpeg)
    if width % 8 or height % 8 or width > 2040 or height > 2040:
        raise ValueError(f"frame {width}x{height}: both sides must be multiples of 8 and at most 2040")
    packets = []
    for off in range(0, len(scan), MAX_FRAGMENT):
        chunk = scan[off:off + MAX_FRAGMENT]
        last = off + MAX_FRAGMENT >= len(scan)
        rtp = struct.pack(">BBHII", 0x80, (0x80 if last else 0) | PAYLOAD_JPEG, (seq + len(packets)) & 0xFFFF,
                          timestamp & 0xFFFFFFFF, ssrc)
        head = struct.pack(">I", off & 0xFFFFFF) + bytes([kind, 255, width // 8, height // 8])
        if off == 0:
            head += struct.pack(">BBH", 0, 0, len(qtables)) + qtables
        packets.append(rtp + head + chunk)
    return packets


class RtspServer:
    """Serves ``frames`` at ``rtsp://127.0.0.1:PORT/line`` until ``stop()``."""

    def __init__(self, frames: list[np.ndarray], port: int, fps: float = 10.0, quality: int = 95) -> None:
        self.jpegs = []
        for f in frames:
            ok, buf = cv2.imencode(".jpg", f, [cv2.IMWRITE_JPEG_QUALITY, quality])
            if not ok:
                raise ValueError("JPEG encoding failed")
            self.jpegs.append(buf.tobytes())
        self.port, self.period = port, 1.0 / fps
        self.url = f"rtsp://127.0.0.1:{port}/line"
        self.sent = 0              # frames sent, over all clients
        self.sessions = 0          # PLAY requests answered
        self._clients: list[socket.socket] = []
        self._lock = threading.Lock()
        self._stopped = threading.Event()
        self._listener = socket.create_server(("127.0.0.1", port), reuse_port=False)
        self._listener.settimeout(0.1)
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._stopped.is_set():
            try:
                conn, _ = self._listener.accept()
            except (TimeoutError, socket.timeout):
                continue
            except OSError:
                return
            with self._lock:
                self._clients.append(conn)
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        reader = conn.makefile("rb")
        streaming: threading.Thread | None = None
        playing = threading.Event()
        try:
            while not self._stopped.is_set():
                request = self._read_request(reader)
                if request is None:
                    break
                method, headers = request
                cseq = headers.get("cseq", "0")
                extra = ""
                status = "200 OK"
                body = b""
                if method == "OPTIONS":
                    extra = "Public: OPTIONS, DESCRIBE, SETUP, PLAY, GET_PARAMETER, TEARDOWN\r\n"
                elif method == "DESCRIBE":
                    body = (f"v=0\r\no=- 0 0 IN IP4 127.0.0.1\r\ns=tileguard test camera\r\nc=IN IP4 0.0.0.0\r\n"
                            f"t=0 0\r\nm=video 0 RTP/AVP {PAYLOAD_JPEG}\r\na=control:track0\r\n").encode()
                    extra = f"Content-Base: {self.url}/\r\nContent-Type: application/sdp\r\n"
                elif method == "SETUP":
                    if "RTP/AVP/TCP" not in headers.get("transport", ""):
                        status = "461 Unsupported Transport"
                    else:
                        extra = "Transport: RTP/AVP/TCP;unicast;interleaved=0-1\r\nSession: 7e57ca11;timeout=60\r\n"
                elif method == "PLAY":
                    extra = "Session: 7e57ca11\r\nRange: npt=0.000-\r\n"
                elif method in ("GET_PARAMETER", "TEARDOWN"):
                    extra = "Session: 7e57ca11\r\n"
                else:
                    status = "501 Not Implemented"
                if body:
                    extra += f"Content-Length: {len(body)}\r\n"
                with self._lock:
                    conn.sendall(f"RTSP/1.0 {status}\r\nCSeq: {cseq}\r\n{extra}\r\n".encode() + body)
                if method == "PLAY" and streaming is None:
                    self.sessions += 1
                    playing.set()
                    streaming = threading.Thread(target=self._stream, args=(conn, playing), daemon=True)
                    streaming.start()
                if method == "TEARDOWN":
                    break
        except OSError:
            pass
        finally:
            playing.clear()
            self._close(conn)

    @staticmethod
    def _read_request(reader) -> tuple[str, dict[str, str]] | None:
        line = reader.readline()
        while line in (b"\r\n", b"\n"):
            line = reader.readline()
        if not line:
            return None
        method = line.split(b" ", 1)[0].decode()
        headers: dict[str, str] = {}
        while (h := reader.readline()) not in (b"\r\n", b"\n", b""):
            key, _, value = h.decode().partition(":")
            headers[key.strip().lower()] = value.strip()
        if int(headers.get("content-length", "0")):
            reader.read(int(headers["content-length"]))
        return method, headers

    def _stream(self, conn: socket.socket, playing: threading.Event) -> None:
        seq, t0, n = 0, time.monotonic(), 0
        while playing.is_set() and not self._stopped.is_set():
            packets = rtp_packets(self.jpegs[n % len(self.jpegs)], seq, int(n * self.period * CLOCK_HZ))
            seq += len(packets)
            try:
                with self._lock:
                    for p in packets:
                        conn.sendall(b"$\x00" + struct.pack(">H", len(p)) + p)
            except OSError:
                return
            self.sent += 1
            n += 1
            time.sleep(max(0.0, t0 + n * self.period - time.monotonic()))

    def _close(self, conn: socket.socket) -> None:
        with self._lock:
            if conn in self._clients:
                self._clients.remove(conn)
        try:
            conn.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        conn.close()

    def drop_clients(self) -> None:
        """Cut every open connection (the listening socket stays)."""
        with self._lock:
            clients = list(self._clients)
        for c in clients:
            self._close(c)

    def stop(self) -> None:
        self._stopped.set()
        self._listener.close()
        self.drop_clients()
