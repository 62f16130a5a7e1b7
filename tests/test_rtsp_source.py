"""The network-camera source against a real RTSP server on loopback (pipeline/rtsp_server.py: RTSP
1.0, Motion-JPEG or H.264 in RTP over the RTSP connection): frames arrive as served, a lost stream becomes an
error item and is reconnected, and a camera gone for longer than ``source.reconnect_s`` ends the
source with an error that names the fix."""
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from pipeline.config import SourceConfig
from pipeline.sources import CaptureSource, expand_env, ffmpeg_options, open_source
from pipeline.rtsp_server import RtspServer, jpeg_parts, rtp_packets
from tests.servers import free_port

DEMO = Path(__file__).resolve().parent.parent / "configs" / "demo" / "sequence"


@pytest.fixture(scope="module")
def camera_frames():
    """Three frames of the bundled demo line (640x480 camera images)."""
    return [cv2.imread(str(DEMO / f"{i:06d}.jpg")) for i in (0, 3, 7)]


def _which(frame, served):
    """Index of the served frame this one shows, and its mean absolute difference (JPEG twice over)."""
    diffs = [float(np.abs(frame.astype(np.int16) - s).mean()) for s in served]
    return int(np.argmin(diffs)), min(diffs)


def _cfg(reconnect_s=5.0):
    cfg = SourceConfig()
    cfg.reconnect_s = reconnect_s
    cfg.stream.open_timeout_s = 3.0
    cfg.stream.read_timeout_s = 1.0
    return cfg


def test_rtp_h264_packets_carry_the_nal_units(camera_frames):
    from pipeline.rtsp_server import h264_access_units, nal_units, rtp_h264_packets

    (unit,) = h264_access_units(camera_frames[:1], fps=10)
    nals = nal_units(unit)
    assert [n[0] & 0x1F for n in nals][:2] == [7, 8] and 5 in [n[0] & 0x1F for n in nals]  # SPS, PPS, IDR slice
    packets = rtp_h264_packets(unit, seq=0, timestamp=0)
    assert [p[1] >> 7 for p in packets] == [0] * (len(packets) - 1) + [1]
    rebuilt, current = [], b""
    for p in packets:  # undo the packetisation: single NAL units and FU-A fragments
        payload = p[12:]
        if payload[0] & 0x1F != 28:
            rebuilt.append(payload)
            continue
        if payload[1] & 0x80:
            current = bytes([(payload[0] & 0xE0) | (payload[1] & 0x1F)])
        current += payload[2:]
        if payload[1] & 0x40:
            rebuilt.append(current)
    assert rebuilt == nals


def test_rtp_jpeg_packets_carry_the_scan_and_tables(camera_frames):
    ok, buf = cv2.imencode(".jpg", camera_frames[0], [cv2.IMWRITE_JPEG_QUALITY, 90])
    tables, scan, w, h, kind = jpeg_parts(buf.tobytes())
    assert (w, h, kind, len(tables)) == (640, 480, 1, 128)  # OpenCV encodes 4:2:0
    packets = rtp_packets(buf.tobytes(), seq=65534, timestamp=9000)
    assert [p[1] >> 7 for p in packets] == [0] * (len(packets) - 1) + [1]  # marker on the frame's last packet
    assert [int.from_bytes(p[2:4], "big") for p in packets[:3]] == [65534, 65535, 0]  # sequence wraps
    payload = packets[0][12 + 8 + 4:] + b"".join(p[12 + 8:] for p in packets[1:])
    assert payload == tables + scan


def _over(transport, reconnect_s=5.0):
    cfg = _cfg(reconnect_s)
    cfg.stream.transport = transport
    return cfg


@pytest.mark.parametrize("codec,transport", [("jpeg", "tcp"), ("h264", "tcp"), ("jpeg", "udp"), ("h264", "udp")])
def test_rtsp_camera_frames_arrive_as_served(camera_frames, codec, transport):
    server = RtspServer(camera_frames, free_port(), fps=20, codec=codec)
    try:
        source = open_source(server.url, _over(transport))
        assert source.live
        got = []
        for item in source:
            assert item.frame is not None, item.reason
            got.append(_which(item.frame, camera_frames))
            if len(got) == 7:
                break
        source.close()
    finally:
        server.stop()
    assert server.transports == [transport]  # source.stream.transport is what the camera was asked for
    which = [i for i, _ in got]
    assert max(d for _, d in got) < 4.0  # the served images, not a torn or grey frame
    assert all((b - a) % 3 == 1 for a, b in zip(which, which[1:])), which  # in order, none skipped


@pytest.mark.parametrize("codec,transport", [("jpeg", "tcp"), ("h264", "tcp"), ("jpeg", "udp")])
def test_lost_stream_is_recorded_and_reconnected(camera_frames, codec, transport):
    server = RtspServer(camera_frames, free_port(), fps=20, codec=codec)
    try:
        source = open_source(server.url, _over(transport))
        items = iter(source)
        for _ in range(3):
            assert next(items).frame is not None
        server.drop_clients()  # the camera reboots; it serves again at once
        lost = next(i for _, i in zip(range(60), items) if i.frame is None)
        assert lost.name.endswith("#lost001") and "camera lost" in lost.reason and "reconnecting" in lost.reason
        assert lost.camera_lost
        after = [next(items) for _ in range(3)]
        assert all(i.frame is not None for i in after)
        assert max(_which(i.frame, camera_frames)[1] for i in after) < 4.0
        assert server.plays == 2 and server.transports == [transport] * 2
        source.close()
    finally:
        server.stop()


def test_camera_gone_longer_than_reconnect_s_ends_the_source(camera_frames):
    server = RtspServer(camera_frames, free_port(), fps=20)
    source = open_source(server.url, _cfg(reconnect_s=1.5))
    items = iter(source)
    assert next(items).frame is not None
    server.stop()
    t0 = time.monotonic()
    with pytest.raises(ConnectionError) as err:
        for item in items:
            pass
    assert item.frame is None and "camera lost" in item.reason  # the loss was yielded before giving up
    assert server.url in str(err.value) and "source.reconnect_s" in str(err.value)
    assert time.monotonic() - t0 < 15  # gives up instead of waiting forever
    source.close()


def test_camera_that_appears_late_is_waited_for(camera_frames):
    port = free_port()
    url = f"rtsp://127.0.0.1:{port}/line"
    with pytest.raises(ConnectionError, match="source.reconnect_s"):
        CaptureSource(url, _cfg(reconnect_s=0.0), live=True)  # nothing there and no patience: refused at once
    servers = []
    timer = threading.Timer(0.7, lambda: servers.append(RtspServer(camera_frames, port, fps=20)))
    timer.start()
    try:
        source = CaptureSource(url, _cfg(reconnect_s=10.0), live=True)  # started before the camera
        item = next(iter(source))
        assert item.frame is not None and _which(item.frame, camera_frames)[1] < 4.0
        source.close()
    finally:
        timer.join()
        for s in servers:
            s.stop()


def test_camera_password_stays_out_of_frame_names(camera_frames):
    """Frame names go to the results file, the MES and the logs; the camera's password must not."""
    server = RtspServer(camera_frames, free_port(), fps=20)  # takes any credentials
    try:
        url = server.url.replace("rtsp://", "rtsp://inspector:s3cr@t@")
        source = open_source(url, _cfg())
        item = next(iter(source))
        source.close()
    finally:
        server.stop()
    assert item.frame is not None and item.name == f"{server.url}#000000" and "s3cr" not in source.label


def test_source_address_reads_its_secrets_from_the_environment():
    env = {"CAM_USER": "inspector", "CAM_PASS": "s3cr@t"}
    assert expand_env("rtsp://${CAM_USER}:${CAM_PASS}@10.0.0.5/line", env) == "rtsp://inspector:s3cr@t@10.0.0.5/line"
    assert expand_env("replay:runs/$HOME/seq", env) == "replay:runs/$HOME/seq"  # only ${NAME} is read
    with pytest.raises(ValueError, match="environment variables CAM_HOST, CAM_PORT are not set"):
        expand_env("rtsp://${CAM_USER}@${CAM_HOST}:${CAM_PORT}/line", env)


def test_stream_options():
    cfg = SourceConfig()
    assert ffmpeg_options(cfg.stream).startswith("rtsp_transport;tcp|")
    cfg.stream.transport, cfg.stream.low_latency = "udp", False
    assert ffmpeg_options(cfg.stream) == "rtsp_transport;udp"


def test_camera_that_ignores_the_requested_size_is_reported():
    from pipeline.config import CameraConfig
    from pipeline.sources import camera_mismatch

    cam = CameraConfig()  # 640x480 at 30 frames/s
    assert camera_mismatch(cam, 640.0, 480.0, 30.0) is None
    assert camera_mismatch(cam, 640.0, 480.0, 0.0) is None  # many cameras do not report a rate
    msg = camera_mismatch(cam, 1280.0, 720.0, 15.0)
    assert "1280x720 px instead of source.camera.width/height 640x480" in msg and "calibrate_line" in msg
    assert "15 frames/s instead of source.camera.fps 30" in msg


def test_serve_rtsp_serves_a_recorded_sequence_as_a_camera(tmp_path, capsys):
    """serve_rtsp, to commission a line without its camera: the demo sequence's frames in order
    (its two corrupt files left out, as a camera never sends them), and clear errors."""
    from tools import serve_rtsp

    port = free_port()
    done = []
    server = threading.Thread(target=lambda: done.append(serve_rtsp.main([str(DEMO), "--port", str(port), "--fps", "20",
                                                                          "--seconds", "4"])))
    server.start()
    time.sleep(1.0)
    source = open_source(f"rtsp://127.0.0.1:{port}/line", _cfg())
    frames, _ = serve_rtsp.load_frames(str(DEMO))
    got = [_which(item.frame, frames) for _, item in zip(range(4), source)]
    source.close()
    server.join(timeout=10)
    assert done == [0] and len(frames) == 20
    which = [i for i, _ in got]  # where a stream starts is the probe's business; then in order, none skipped
    assert all((b - a) % len(frames) == 1 for a, b in zip(which, which[1:])) and max(d for _, d in got) < 4.0, got
    assert "20 frames at 20.0 frames/s" in capsys.readouterr().out
    assert serve_rtsp.main([str(tmp_path / "nothing")]) == 2
    odd = tmp_path / "odd"
    odd.mkdir()
    cv2.imwrite(str(odd / "a.png"), np.zeros((100, 130, 3), np.uint8))
    assert serve_rtsp.main([str(odd), "--port", str(free_port()), "--seconds", "0.1"]) == 2
    assert "multiples of 8" in capsys.readouterr().err


def test_record_sequence_from_an_rtsp_camera_replays(camera_frames, tmp_path, capsys):
    """record_sequence --source rtsp://...: the frames as served, in order, with rising capture
    times, as a sequence that replays."""
    from pipeline.sequence import read_index
    from pipeline.sources import open_source as open_any
    from tools import record_sequence

    server = RtspServer(camera_frames, free_port(), fps=20)
    try:
        assert record_sequence.main(["--source", server.url, "--out", str(tmp_path / "seq"), "--frames", "6"]) == 0
    finally:
        server.stop()
    index = read_index(tmp_path / "seq")
    times = [e["capture_ns"] for e in index]
    assert len(index) == 6 and times == sorted(times) and len(set(times)) == 6
    replayed = [_which(item.frame, camera_frames) for item in open_any(f"replay:{tmp_path / 'seq'}")]
    which = [i for i, _ in replayed]
    assert all((b - a) % 3 == 1 for a, b in zip(which, which[1:])) and max(d for _, d in replayed) < 4.0
    assert "wrote 6 frames" in capsys.readouterr().out


def test_record_sequence_names_a_camera_that_is_not_there(tmp_path, capsys):
    from tools import record_sequence

    line = tmp_path / "line.yaml"
    line.write_text("source:\n  reconnect_s: 0.5\n")  # the line's source settings, here its patience
    url = f"rtsp://127.0.0.1:{free_port()}/line"
    assert record_sequence.main(["--source", url, "--config", str(line), "--out", str(tmp_path / "seq")]) == 2
    err = capsys.readouterr().err
    assert f"record_sequence: error: source {url}" in err and "source.reconnect_s" in err
