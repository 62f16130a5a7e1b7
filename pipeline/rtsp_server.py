"""A small RTSP camera: serves frames as an IP camera does, for commissioning a line without one
(``serve_rtsp``) and for the source tests. RTSP 1.0, frames in RTP over the RTSP TCP
connection or over UDP: Motion-JPEG (RFC 2435) or H.264 (RFC 6184: single NAL unit and FU-A packets; encoded
with PyAV's libx264, every frame an IDR frame with its SPS and PPS, so a stream can start anywhere).

It answers OPTIONS, DESCRIBE, SETUP (RTP interleaved on the RTSP connection, or unicast UDP to the
client's RTP port; anything else gets 461), PLAY, GET_PARAMETER (keep-alive) and TEARDOWN. After PLAY it sends the
given frames in a loop at ``fps``. ``drop_clients()`` cuts every connection, as a camera reboot or a
pulled cable does; ``stop()`` also closes the listening socket. Frames are BGR uint8; for
Motion-JPEG both sides must be multiples of 8 (RFC 2435 sends the size in units of 8 px).

Standard library and OpenCV; H.264 also needs PyAV (``pip install av``; in the test extra).
"""
from __future__ import annotations

import base64
import re
import socket
import struct
import threading
import time

import cv2
import numpy as np

PAYLOAD_JPEG = 26      # RTP static payload type for JPEG (RFC 3551)
PAYLOAD_H264 = 96      # a dynamic payload type, named in the SDP
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


def h264_access_units(frames: list[np.ndarray], fps: float) -> list[bytes]:
    """One H.264 access unit (Annex B) per BGR frame, each an IDR frame with its SPS and PPS in
    band, so a stream can start at any frame and loop."""
    from fractions import Fraction

    try:
        import av
    except ImportError as exc:
        raise ValueError("H.264 needs PyAV: pip install av (or serve Motion-JPEG)") from exc

    ctx = av.CodecContext.create("libx264", "w")
    ctx.width, ctx.height, ctx.pix_fmt = frames[0].shape[1], frames[0].shape[0], "yuv420p"
    ctx.time_base, ctx.framerate, ctx.gop_size = Fraction(1, 1000), Fraction(round(fps)), 1
    ctx.options = {"preset": "ultrafast", "tune": "zerolatency", "crf": "16", "x264-params": "repeat-headers=1"}
    units = []
    for i, frame in enumerate(frames):
        picture = av.VideoFrame.from_ndarray(frame, format="bgr24").reformat(format="yuv420p")
        picture.pts = i
        units += [bytes(p) for p in ctx.encode(picture)]
    units += [bytes(p) for p in ctx.encode(None)]
    if len(units) != len(frames):
        raise RuntimeError(f"libx264 gave {len(units)} access units for {len(frames)} frames")
    return units


def nal_units(access_unit: bytes) -> list[bytes]:
    """Annex B -> NAL units (emulation prevention keeps start codes out of NAL data)."""
    return [n.rstrip(b"\x00") for n in re.split(b"\x00\x00\x00\x01|\x00\x00\x01", access_unit) if n.strip(b"\x00")]


def rtp_h264_packets(access_unit: bytes, seq: int, timestamp: int, ssrc: int = 0x7E57CA11) -> list[bytes]:
    """One access unit as RTP/H.264 packets: a NAL unit that fits goes whole, a larger one in FU-A
    fragments; the marker bit is on the access unit's last packet."""
    payloads = []
    for nal in nal_units(access_unit):
        if len(nal) <= MAX_FRAGMENT:
            payloads.append(nal)
            continue
        indicator, kind, body = (nal[0] & 0xE0) | 28, nal[0] & 0x1F, nal[1:]
        for off in range(0, len(body), MAX_FRAGMENT):
            start, end = off == 0, off + MAX_FRAGMENT >= len(body)
            payloads.append(bytes([indicator, (0x80 if start else 0) | (0x40 if end else 0) | kind])
                            + body[off:off + MAX_FRAGMENT])
    return [struct.pack(">BBHII", 0x80, (0x80 if i == len(payloads) - 1 else 0) | PAYLOAD_H264, (seq + i) & 0xFFFF,
                        timestamp & 0xFFFFFFFF, ssrc) + p for i, p in enumerate(payloads)]


class RtspServer:
    """Serves ``frames`` at ``rtsp://HOST:PORT/PATH`` until ``stop()``."""

    def __init__(self, frames: list[np.ndarray], port: int, fps: float = 10.0, quality: int = 95,
                 codec: str = "jpeg", host: str = "127.0.0.1", path: str = "line") -> None:
        if codec not in ("jpeg", "h264"):
            raise ValueError(f"codec {codec!r}: expected jpeg or h264")
        self.codec = codec
        odd = {f"{f.shape[1]}x{f.shape[0]}" for f in frames if f.shape[0] % 8 or f.shape[1] % 8}
        if codec == "jpeg" and odd:
            raise ValueError(f"Motion-JPEG over RTP needs frame sides that are multiples of 8, got {sorted(odd)}; "
                             "serve H.264 instead, or crop the frames")
        if codec == "h264":
            units = h264_access_units(frames, fps)
            sps, pps = (next(n for n in nal_units(units[0]) if n[0] & 0x1F == t) for t in (7, 8))
            self.media = (f"m=video 0 RTP/AVP {PAYLOAD_H264}\r\na=rtpmap:{PAYLOAD_H264} H264/{CLOCK_HZ}\r\n"
                          f"a=fmtp:{PAYLOAD_H264} packetization-mode=1;sprop-parameter-sets="
                          f"{base64.b64encode(sps).decode()},{base64.b64encode(pps).decode()}\r\n")
            packetise = rtp_h264_packets
        else:
            units = []
            for f in frames:
                ok, buf = cv2.imencode(".jpg", f, [cv2.IMWRITE_JPEG_QUALITY, quality])
                if not ok:
                    raise ValueError("JPEG encoding failed")
                units.append(buf.tobytes())
            self.media = f"m=video 0 RTP/AVP {PAYLOAD_JPEG}\r\n"
            packetise = rtp_packets
        # Each frame's packets are made once; sending only stamps their sequence numbers and time.
        self.packets = [packetise(unit, 0, 0) for unit in units]
        self.port, self.period = port, 1.0 / fps
        self.url = f"rtsp://{socket.gethostname() if host == '0.0.0.0' else host}:{port}/{path}"
        self.sent = 0              # frames sent, over all clients
        self.plays = 0             # PLAY requests answered
        self.transports: list[str] = []  # "tcp" or "udp", per client set up
        self._clients: list[socket.socket] = []
        self._udp_socks: dict[socket.socket, socket.socket] = {}
        self._lock = threading.Lock()
        self._stopped = threading.Event()
        self._listener = socket.create_server((host, port), reuse_port=False)
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
        send = None  # how this client's RTP packets go out, once set up
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
                            f"t=0 0\r\n{self.media}a=control:track0\r\n").encode()
                    extra = f"Content-Base: {self.url}/\r\nContent-Type: application/sdp\r\n"
                elif method == "SETUP":
                    transport = headers.get("transport", "")
                    ports = re.search(r"client_port=(\d+)-(\d+)", transport)
                    if "RTP/AVP/TCP" in transport:
                        send = self._interleaved(conn)
                        extra = "Transport: RTP/AVP/TCP;unicast;interleaved=0-1\r\n"
                        self.transports.append("tcp")
                    elif ports:
                        send, server_port = self._udp(conn, int(ports.group(1)))
                        extra = (f"Transport: RTP/AVP;unicast;client_port={ports.group(1)}-{ports.group(2)};"
                                 f"server_port={server_port}-{server_port + 1}\r\n")
                        self.transports.append("udp")
                    else:
                        status = "461 Unsupported Transport"
                    if send is not None:
                        extra += "Session: 7e57ca11;timeout=60\r\n"
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
                if method == "PLAY" and streaming is None and send is not None:
                    self.plays += 1
                    playing.set()
                    streaming = threading.Thread(target=self._stream, args=(send, playing), daemon=True)
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

    def _interleaved(self, conn: socket.socket):
        """RTP packets on the RTSP connection, each behind '$', channel 0 and its length (RFC 2326 10.12)."""
        def send(packet: bytes | bytearray) -> None:
            with self._lock:  # not between the RTSP answers on the same connection
                conn.sendall(b"$\x00" + struct.pack(">H", len(packet)) + packet)
        return send

    def _udp(self, conn: socket.socket, client_port: int):
        """RTP packets as UDP datagrams to the client's RTP port, from a port of the server's own; the
        socket is closed with the RTSP connection, so a dropped client stops receiving, as it would
        from a camera that went away."""
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind((conn.getsockname()[0], 0))
        target = (conn.getpeername()[0], client_port)
        with self._lock:
            earlier = self._udp_socks.pop(conn, None)  # a second SETUP on the same connection
            self._udp_socks[conn] = sock
        if earlier is not None:
            earlier.close()

        def send(packet: bytes | bytearray) -> None:
            sock.sendto(packet, target)
            time.sleep(0)  # let the receiver drain its socket buffer between datagrams
        return send, sock.getsockname()[1]

    def _stream(self, send, playing: threading.Event) -> None:
        seq, t0, n = 0, time.monotonic(), 0
        while playing.is_set() and not self._stopped.is_set():
            timestamp = int(n * self.period * CLOCK_HZ) & 0xFFFFFFFF
            try:
                for p in self.packets[n % len(self.packets)]:
                    p = bytearray(p)
                    struct.pack_into(">HI", p, 2, seq & 0xFFFF, timestamp)
                    send(p)
                    seq += 1
            except OSError:
                return
            self.sent += 1
            n += 1
            time.sleep(max(0.0, t0 + n * self.period - time.monotonic()))

    def _close(self, conn: socket.socket) -> None:
        with self._lock:
            if conn in self._clients:
                self._clients.remove(conn)
            udp = self._udp_socks.pop(conn, None)
        if udp is not None:
            udp.close()
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
