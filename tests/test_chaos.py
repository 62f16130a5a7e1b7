"""Fault injection on the whole line: real processes, real ZeroMQ sockets, a real PLC (pymodbus, or a
socket that never answers) and a real HTTP server. Each case asserts exactly one record per frame
read, the exit code, and that no process of the run outlives run_pipeline. docs/reliability.md
lists the faults and the test for each."""
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import zmq

from pipeline.journal import SOURCE_JOURNAL, FrameJournal
from pipeline.sinks.results_log import read_records
from tests.servers import BlackHolePlc, MesServer, free_port
from tests.test_pipeline_e2e import _realtime_config, _retimed
from tests.test_sinks import _wait

ROOT = Path(__file__).resolve().parent.parent


class Run:
    """run_pipeline in its own process, its stderr read on a thread (so a test can wait for a line)."""

    def __init__(self, args: list[str], run_dir: Path, new_session: bool = False, env: dict | None = None) -> None:
        self.run_dir = run_dir
        self.proc = subprocess.Popen([sys.executable, "-m", "tools.run_pipeline", *args, "--run-dir", str(run_dir)],
                                     cwd=ROOT, stderr=subprocess.PIPE, text=True, start_new_session=new_session,
                                     env={**os.environ, **(env or {})})
        self.lines: list[str] = []
        self.reader = threading.Thread(target=lambda: self.lines.extend(iter(self.proc.stderr.readline, "")),
                                       daemon=True)
        self.reader.start()

    @property
    def err(self) -> str:
        return "".join(self.lines)

    def wait_for(self, pred, timeout: float = 60.0) -> None:
        end = time.monotonic() + timeout
        while not pred():
            if time.monotonic() > end or self.proc.poll() is not None and not pred():
                raise AssertionError(f"condition not met; run_pipeline exit {self.proc.poll()}; stderr:\n{self.err}")
            time.sleep(0.02)

    def finish(self, timeout: float = 120.0) -> int:
        code = self.proc.wait(timeout=timeout)
        self.reader.join(5)
        return code

    def stage_pids(self, stage: str = "") -> list[int]:
        out = subprocess.run(["pgrep", "-f", f"pipeline.stages.{stage}.*{self.run_dir}"], capture_output=True, text=True)
        return [int(p) for p in out.stdout.split()]

    def leftover(self, within: float = 10.0) -> list[int]:
        """Stage processes of this run still alive after ``within`` seconds."""
        end = time.monotonic() + within
        while self.stage_pids() and time.monotonic() < end:
            time.sleep(0.1)
        return self.stage_pids()


def with_model(config: Path, model: Path, out: Path) -> Path:
    """A copy of the line config ``config`` whose inference.model is ``model``."""
    text = re.sub(r"(?m)^(  model: ).*$", lambda m: f'{m.group(1)}"{model}"', Path(config).read_text(), count=1)
    assert f'model: "{model}"' in text
    out.write_text(text)
    return out


def frames_read(run_dir: Path) -> int:
    frames, count = FrameJournal.read_all(run_dir / SOURCE_JOURNAL)
    return count if count is not None else len(frames)


def assert_one_record_per_frame(results: Path, n: int) -> list[dict]:
    records = read_records(results)
    assert [r["frame_id"] for r in records] == list(range(n)), [r["frame_id"] for r in records]
    return records


@pytest.fixture
def slow_line(line, tmp_path):
    """The line at recorded pace (a stand-in camera), 40 frames 150 ms apart."""
    config, seq = line
    return _realtime_config(config, tmp_path, camera_queue=64), _retimed(seq, tmp_path / "seq40", 150_000_000, repeat=4)


# 1. kill -9 of the stitch stage right after the source has read its last frame

@pytest.mark.slow
def test_stitch_killed_right_after_the_last_frame_is_read_loses_no_record(line, tmp_path):
    config, seq = line
    fast = _retimed(seq, tmp_path / "seq40", 1_000_000, repeat=4)  # as fast as the line takes them
    results = tmp_path / "r.jsonl"
    run = Run(["--config", str(config), "--source", f"replay:{fast}", "--results", str(results), "--quiet"],
              tmp_path / "run")
    journal = run.run_dir / SOURCE_JOURNAL
    run.wait_for(lambda: journal.is_file() and '"end"' in journal.read_text())
    for pid in run.stage_pids("stitch"):
        os.kill(pid, signal.SIGKILL)
    assert run.finish() == 0, run.err
    assert "stitch exited with -9; restarting" in run.err
    records = assert_one_record_per_frame(results, 40)
    assert all(r["source_name"] for r in records)
    odd = [r for r in records if r["verdict"] == "ERROR" and "not a decodable image" not in r["reason"]]
    assert all("stitch stage crashed" in r["reason"] for r in odd), odd
    assert run.leftover() == []


# 2. SIGTERM drains like Ctrl-C; no stage outlives run_pipeline

@pytest.mark.slow
@pytest.mark.parametrize("to_group", [False, True], ids=["to-run_pipeline", "to-process-group"])
def test_sigterm_drains_the_line_and_leaves_no_process(slow_line, tmp_path, to_group):
    config, seq = slow_line
    results = tmp_path / "r.jsonl"
    run = Run(["--config", str(config), "--source", f"replay:{seq}", "--results", str(results), "--quiet"],
              tmp_path / "run", new_session=to_group)
    run.wait_for(lambda: results.is_file() and len(read_records(results)) >= 3)
    if to_group:  # what systemd (KillMode=control-group) and a shell's kill -- -PGID do
        os.killpg(run.proc.pid, signal.SIGTERM)
    else:  # what docker stop and kill PID do
        run.proc.send_signal(signal.SIGTERM)
    assert run.finish(timeout=90) == 143, run.err
    assert "SIGTERM: stopping" in run.err
    n = frames_read(run.run_dir)
    assert 3 <= n < 40
    records = assert_one_record_per_frame(results, n)
    assert not [r for r in records if "not inspected" in r["reason"]]  # drained by the line itself
    assert run.leftover() == []


@pytest.mark.slow
def test_stages_do_not_outlive_a_killed_run_pipeline(slow_line, tmp_path):
    config, seq = slow_line
    results = tmp_path / "r.jsonl"
    run = Run(["--config", str(config), "--source", f"replay:{seq}", "--results", str(results), "--quiet"],
              tmp_path / "run")
    run.wait_for(lambda: results.is_file() and len(read_records(results)) >= 2)
    assert len(run.stage_pids()) >= 5
    run.proc.kill()
    run.finish()
    assert run.leftover(within=10) == []  # the kernel's parent-death signal, then each stage's own alarm


# 3. giving up after a crash loop still records every frame read

@pytest.mark.slow
def test_crash_loop_gives_up_with_a_record_for_every_frame_read(line, trained_model, slow_line, tmp_path):
    config, seq = slow_line
    model = tmp_path / "model"
    shutil.copytree(trained_model, model)
    cfg = with_model(config, model, tmp_path / "own_model.yaml")
    results = tmp_path / "r.jsonl"
    run = Run(["--config", str(cfg), "--source", f"replay:{seq}", "--results", str(results), "--quiet"],
              tmp_path / "run")
    run.wait_for(lambda: results.is_file() and len(read_records(results)) >= 3)
    onnx = model / "model.onnx"
    onnx.write_bytes(onnx.read_bytes()[:1000])  # the model file goes bad under the running line
    for pid in run.stage_pids("infer"):
        os.kill(pid, signal.SIGKILL)  # every restart now fails to load it
    assert run.finish() == 1, run.err
    assert "infer0 failed 6 times" in run.err and "giving every open frame an ERROR record" in run.err
    n = frames_read(run.run_dir)
    records = assert_one_record_per_frame(results, n)
    assert n < 40 and any("infer0 failed 6 times" in r["reason"] for r in records)
    assert run.leftover() == []


# 4. a PLC that hangs delays no other sink, and stale verdicts are not written as if fresh

@pytest.mark.slow
def test_hung_plc_delays_neither_the_results_log_nor_the_line(line, tmp_path):
    config, seq = line
    port = free_port()
    plc = BlackHolePlc(port)
    cfg = tmp_path / "plc.yaml"
    cfg.write_text(Path(config).read_text() + f"\nsinks:\n  modbus:\n    enabled: true\n    port: {port}\n"
                   "    timeout_s: 1.0\n    max_age_s: 1.0\n")
    results = tmp_path / "r.jsonl"
    try:
        run = Run(["--config", str(cfg), "--source", f"replay:{_retimed(seq, tmp_path / 's30', 1_000_000, 3)}",
                   "--results", str(results), "--quiet"], tmp_path / "run")
        assert run.finish() == 0, run.err
    finally:
        plc.stop()
    assert_one_record_per_frame(results, 30)
    events = [json.loads(x) for x in results.read_text().splitlines() if '"event"' in x]
    assert events and all(e["event"] == "undelivered" and e["sink"] == "modbus" for e in events)
    # Blocking writes in turn would take a 1 s timeout per record; queued, the stale ones are skipped.
    assert any("s old" in e["reason"] for e in events)
    assert run.leftover() == []


def test_slow_plc_does_not_delay_the_mes(tmp_path):
    """Each blocking sink on its own thread: a hung PLC (3 s timeouts) and the MES get the same
    records; the MES has them all while the PLC is still on its first."""
    from pipeline.config import LineConfig
    from pipeline.sinks.base import build_sinks

    plc_port, mes_port = free_port(), free_port()
    plc, mes = BlackHolePlc(plc_port), MesServer(mes_port)
    cfg = LineConfig()
    cfg.sinks.modbus.enabled, cfg.sinks.modbus.port, cfg.sinks.modbus.timeout_s = True, plc_port, 3.0
    cfg.sinks.http.enabled, cfg.sinks.http.url = True, f"http://127.0.0.1:{mes_port}/parts"
    cfg.sinks.http.spool_dir = str(tmp_path / "spool")
    reported = []
    sinks = build_sinks(cfg, lambda *a: reported.append(a))
    try:
        t0 = time.monotonic()
        for i in range(5):
            rec = {"frame_id": i, "source_name": f"f{i}", "verdict": "OK", "defects": [],
                   "capture_ns": time.monotonic_ns()}
            for s in sinks:
                s.handle(rec, {}, None)
        handled = time.monotonic() - t0
        end = time.monotonic() + 2.5
        while len(mes.received) < 5 and time.monotonic() < end:
            time.sleep(0.02)
        assert len(mes.received) == 5 and handled < 2.5  # in turn, one PLC timeout alone is 3 s
    finally:
        for s in sinks:
            s.close(drain_s=0.5)
        plc.stop()
        mes.stop()


# 5. Modbus: the verdict block is one write, sequence last, nothing after a failure

def test_failed_coil_write_writes_no_verdict_and_the_plc_sees_the_miss(plc):
    from pipeline.sinks.modbus import ModbusSink

    port, reader = plc
    reported = []
    sink = ModbusSink("127.0.0.1", port, verdict_coil=500, result_register=10, heartbeat_register=20,
                      report=lambda *a: reported.append(a))  # coil 500 does not exist: the PLC refuses it
    ng = {"frame_id": 0, "verdict": "NG", "defects": [{}], "capture_ns": time.monotonic_ns()}
    sink.handle(ng, {}, None)
    assert reader.read_holding_registers(10, count=4, device_id=1).registers == [0, 0, 0, 0]  # no sequence: no part
    assert reported and reported[0][:2] == (0, "modbus") and "reject coil not written" in reported[0][2]
    sink.coil = 5  # the PLC program fixed
    sink.handle({"frame_id": 1, "verdict": "OK", "defects": [], "capture_ns": time.monotonic_ns()}, {}, None)
    # verdict OK, 0 defects, 1 missed result, sequence 2 (the gap says which part was missed)
    assert reader.read_holding_registers(10, count=4, device_id=1).registers == [1, 0, 1, 2]
    sink.close()


def test_stale_verdict_is_not_written_after_a_plc_outage(plc):
    from pipeline.sinks.modbus import ModbusSink

    port, reader = plc
    reported = []
    sink = ModbusSink("127.0.0.1", port, verdict_coil=1, result_register=30, heartbeat_register=40, max_age_s=0.5,
                      report=lambda *a: reported.append(a))
    old = time.monotonic_ns() - 5_000_000_000
    for i in range(3):  # verdicts that waited out a PLC outage
        sink.handle({"frame_id": i, "verdict": "NG", "defects": [], "capture_ns": old}, {}, None)
    assert reader.read_holding_registers(30, count=4, device_id=1).registers == [0, 0, 0, 0]
    assert [r[0] for r in reported] == [0, 1, 2] and all("s old" in r[2] for r in reported)
    sink.handle({"frame_id": 3, "verdict": "OK", "defects": [], "capture_ns": time.monotonic_ns()}, {}, None)
    assert reader.read_holding_registers(30, count=4, device_id=1).registers == [1, 0, 3, 4]
    sink.close()


# 6. one malformed message never kills a stage

def test_malformed_messages_are_refused_at_the_boundary():
    from pipeline import messages, wire
    from pipeline.messages import MessageError, check

    bad = [({"kind": "register", "source_name": "a", "capture_ns": 1}, {}, "without 'frame_id'"),
           ({"kind": "register", "frame_id": "7", "source_name": "a", "capture_ns": 1}, {}, "'frame_id' is str"),
           ({"kind": "register", "frame_id": -1, "source_name": "a", "capture_ns": 1}, {}, "negative"),
           ({"kind": "record"}, {}, "without 'record'"),
           ({"kind": "record", "record": {"verdict": "OK"}}, {}, "integer frame_id"),
           ({"kind": "tiles", **messages.frame_ids({"frame_id": 1, "source_name": "a", "capture_ns": 1}),
             "grid": {"height": 1, "width": 1, "tile": 1, "ys": [0], "xs": [0]}, "H": [0.0] * 9,
             "t_pre_ns": [0, 1]}, {}, "without array 'tiles'"),
           ({"kind": "status", "pid": 1}, {}, "without 'stage'"),
           ({"kind": "result", "frame_id": 1, "source_name": "a", "capture_ns": 1, "verdict": "MAYBE", "reason": ""},
            {}, "verdict 'MAYBE'"),
           ({"kind": "frame", "frame_id": 1, "source_name": "a", "capture_ns": 1},
            {"image": np.zeros((2, 2, 2, 2, 2), np.uint8)}, "array 'image'"),
           ({"kind": "nonsense"}, {}, "unknown message kind")]
    for header, arrays, why in bad:
        with pytest.raises(MessageError, match=why.replace("(", r"\(").replace("'", "'")):
            check(header, arrays)
    # A shape whose product overflows int64 cannot pass as a small array.
    frames = wire.encode({"kind": "frame"}, {"x": np.zeros(1, np.uint8)})
    import msgpack
    header = msgpack.unpackb(frames[0])
    header["arrays"][0]["shape"] = [2 ** 32, 2 ** 32, 2 ** 32]
    with pytest.raises(wire.WireError, match="would be"):
        wire.decode([msgpack.packb(header), b"\0"])
    with pytest.raises(wire.WireError, match="header of"):
        wire.decode([b"\x80" + b"\0" * (wire.MAX_HEADER_BYTES + 1)])
    # every socket caps what a peer may send
    ctx = zmq.Context()
    try:
        from pipeline.transport import make_socket
        sock = make_socket(ctx, zmq.PULL, "inproc://cap", bind=True)
        assert sock.getsockopt(zmq.MAXMSGSIZE) == wire.MAX_PART_BYTES
        sock.close(0)
    finally:
        ctx.term()


@pytest.mark.slow
def test_malformed_messages_to_every_stage_are_counted_not_fatal(slow_line, tmp_path):
    import msgpack

    from pipeline import wire

    config, seq = slow_line
    results = tmp_path / "r.jsonl"
    run = Run(["--config", str(config), "--source", f"replay:{seq}", "--results", str(results), "--quiet"],
              tmp_path / "run")
    run.wait_for(lambda: results.is_file() and len(read_records(results)) >= 2)
    overflow = msgpack.packb({"v": wire.VERSION, "kind": "frame", "arrays": [
        {"name": "image", "dtype": "uint8", "shape": [2 ** 40, 2 ** 40]}]})
    bad = {"frames": [[msgpack.packb({"v": 1, "kind": "frame", "arrays": []})], [overflow, b"x"], [b"\xc1garbage"]],
           "verdict": [wire.encode({"kind": "register", "source_name": "x", "capture_ns": 1}),
                       wire.encode({"kind": "crash", "stage": "infer0"}),
                       wire.encode({"kind": "maps", "frame_id": 3})],
           "results": [wire.encode({"kind": "record"}), wire.encode({"kind": "end", "count": "all"})],
           "status": [wire.encode({"kind": "status", "pid": 1}), [b"not msgpack at all \xc1"]]}
    ctx = zmq.Context()
    try:
        for endpoint, msgs in bad.items():
            sock = ctx.socket(zmq.PUSH)
            sock.connect(f"ipc://{run.run_dir.resolve()}/{endpoint}")
            for m in msgs:
                sock.send_multipart(m)
            sock.close(linger=2000)
    finally:
        ctx.term()
    assert run.finish() == 0, run.err
    assert_one_record_per_frame(results, 40)
    for stage in ("preprocess", "stitch", "sinks", "run_pipeline"):
        assert f"{stage}: dropped" in run.err, (stage, run.err)
    assert "restarting" not in run.err and "Traceback" not in run.err
    assert run.leftover() == []


# 7. HTTP: refused records set aside, redirects not followed, a bad spool file never stops the sender

def test_mes_refusal_and_redirect_go_to_dead_letter_and_the_rest_goes_on(tmp_path, capsys):
    from pipeline.sinks.http import DEAD_LETTER, HttpSink

    port = free_port()
    mes = MesServer(port, answers={1: 400, 2: 302})
    spool = tmp_path / "spool"
    spool.mkdir()
    (spool / "notes.txt").write_text("left here by someone")  # a stray file: start-up must not care
    (spool / "000000000000.json").write_text("")  # an empty spool file (a crash before the rename fixes)
    try:
        sink = HttpSink(f"http://127.0.0.1:{port}/parts", spool, backoff_s=0.05, retries=1)
        for i in range(4):
            sink.handle({"frame_id": i, "verdict": "OK"}, {}, None)
        assert _wait(lambda: len(mes.received) == 2)
        assert [r["frame_id"] for r in mes.received] == [0, 3]
        assert not [r for r in mes.requests if r[0] == "GET"]  # the 302 was not followed (as a GET)
        sink.close()
    finally:
        mes.stop()
    dead = sorted(p.name for p in (spool / DEAD_LETTER).iterdir())
    assert len([d for d in dead if d.endswith(".json")]) == 3  # the empty file, the 400 and the 302
    reasons = " ".join(p.read_text() for p in (spool / DEAD_LETTER).glob("*.reason"))
    assert "not a readable record" in reasons and "400" in reasons and "302" in reasons and "redirect" in reasons
    assert (spool / "notes.txt").is_file() and sink.pending() == 0


def test_mes_token_comes_from_the_environment_and_stays_out_of_logs_and_config_copies(line, tmp_path, monkeypatch):
    config, seq = line
    port = free_port()
    mes = MesServer(port)
    token = "Bearer s3cret-" + os.urandom(4).hex()
    url_token = "qt-" + os.urandom(4).hex()
    cfg = tmp_path / "mes.yaml"
    cfg.write_text(Path(config).read_text() + f"\nsinks:\n  http:\n    enabled: true\n"
                   f"    url: http://127.0.0.1:{port}/parts?line=3&access_token={url_token}\n"
                   f"    spool_dir: {tmp_path / 'spool'}\n    headers_env: {{Authorization: MES_AUTH}}\n")
    results = tmp_path / "r.jsonl"
    try:
        run = Run(["--config", str(cfg), "--source", f"replay:{seq}", "--results", str(results), "--quiet"],
                  tmp_path / "run", env={"MES_AUTH": token})
        assert run.finish() == 0, run.err
        assert _wait(lambda: len(mes.received) == 10)
    finally:
        mes.stop()
    assert {h.get("Authorization") for _, _, h in mes.requests} == {token}
    copy = Path(str(results) + ".config.yaml").read_text()
    assert token not in copy and url_token not in copy and "access_token=***" in copy and "line=3" in copy
    assert token not in run.err and url_token not in run.err
    missing = Run(["--config", str(cfg), "--source", f"replay:{seq}", "--quiet"], tmp_path / "run2")
    assert missing.finish() == 2 and "MES_AUTH" in missing.err  # not set: said before anything starts


def test_credentials_and_tokens_never_leave_a_url():
    from pipeline.redact import redact_url, without_credentials

    assert without_credentials("rtsp://user:pa/ss@cam.local:554/stream1") == "rtsp://cam.local:554/stream1"
    assert without_credentials("RTSP://admin:p@ss@10.0.0.5/live") == "RTSP://10.0.0.5/live"
    assert without_credentials("rtsp://cam/live?user=a&password=hunter2&channel=1") == \
        "rtsp://cam/live?user=a&password=***&channel=1"
    assert redact_url("https://u:pw@mes.plant/api/parts?token=abc&line=3") == "https://***@mes.plant/api/parts?token=***&line=3"
    assert redact_url("rtsp://cam/live?sessid=9f&fps=10") == "rtsp://cam/live?sessid=***&fps=10"
    assert redact_url("camera0") == "camera0" and redact_url("dir:/data/frames") == "dir:/data/frames"


def test_spool_write_is_durable_and_whole(tmp_path, monkeypatch):
    from pipeline.sinks import http

    synced = []
    real = os.fsync
    monkeypatch.setattr(http.os, "fsync", lambda fd: (synced.append(fd), real(fd)))
    sink = http.HttpSink(f"http://127.0.0.1:{free_port()}/x", tmp_path / "spool", timeout_s=0.2, retries=0)
    sink.handle({"frame_id": 0, "verdict": "OK"}, {}, None)
    assert len(synced) >= 2  # the file, then its folder
    assert [p.name for p in (tmp_path / "spool").iterdir() if p.suffix == ".tmp"] == []
    sink.close(drain_s=0)


# 8. bad models and paths: one clear line, exit 2, before anything starts; no torn results line

def _cli(args: list[str], timeout: float = 60.0) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize("fault", ["missing-folder", "corrupt-onnx", "results-not-writable"])
def test_bad_model_or_path_stops_run_pipeline_before_it_starts(line, trained_model, tmp_path, fault):
    config, seq = line
    cfg, results = Path(config), tmp_path / "r.jsonl"
    if fault != "results-not-writable":
        model = tmp_path / "model"
        if fault == "corrupt-onnx":
            shutil.copytree(trained_model, model)
            (model / "model.onnx").write_bytes(b"\x08\x07garbage" * 100)
        cfg = with_model(config, model, tmp_path / "bad.yaml")
    else:
        results = Path("/sys/tileguard-chaos/r.jsonl")  # not writable, even for root
    run = Run(["--config", str(cfg), "--source", f"replay:{seq}", "--results", str(results), "--quiet"],
              tmp_path / "run")
    assert run.finish(timeout=60) == 2, run.err
    lines = [x for x in run.err.splitlines() if x.strip()]
    assert len(lines) == 1 and lines[0].startswith("run_pipeline: error:") and "Traceback" not in run.err, run.err
    assert {"missing-folder": "not found", "corrupt-onnx": "not a readable ONNX model",
            "results-not-writable": "cannot write there"}[fault] in lines[0]
    assert not (tmp_path / "run").exists()  # nothing started


def test_tools_say_one_line_for_a_corrupt_model(line, trained_model, mini_data, tmp_path):
    config, seq = line
    model = tmp_path / "model"
    shutil.copytree(trained_model, model)
    (model / "model.onnx").write_bytes(b"\x08\x07garbage" * 100)
    calls = {"evaluate": ["tools.evaluate", "--model", str(model), "--data", str(mini_data), "--out", str(tmp_path / "ev")],
             "benchmark": ["tools.benchmark", "--model", str(model), "--batch", "1", "--seconds", "0.1", "--no-peak"],
             "calibrate_line": ["tools.calibrate_line", "--frames", str(Path(config).parent / "calib"), "--model", str(model),
                                "--out", str(tmp_path / "l.yaml")]}
    for name, args in calls.items():
        proc = _cli(args)
        assert proc.returncode == 2 and "Traceback" not in proc.stderr, (name, proc.stderr)
        said = [x for x in proc.stderr.splitlines() if x.startswith(f"{name}: error:")]
        assert len(said) == 1 and str(model) in said[0] and "export" in said[0], (name, proc.stderr)
        assert "cannot load this model" in said[0] or "not a readable ONNX model" in said[0]


def test_a_full_disk_never_leaves_a_torn_results_line(tmp_path):
    """RLIMIT_FSIZE makes the kernel cut a write short at the limit, as a full disk does; the log
    cuts the torn line back, keeps the records, and writes them once it can."""
    script = f"""
import json, resource, sys
from pipeline.sinks.results_log import ResultsLog
log = ResultsLog({str(tmp_path / 'r.jsonl')!r})
soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
resource.setrlimit(resource.RLIMIT_FSIZE, (1000, hard))
for i in range(20):
    log.handle({{"frame_id": i, "verdict": "OK", "reason": "x" * 80}}, {{}}, None)
print(len(log.backlog), flush=True)
assert open({str(tmp_path / 'r.jsonl')!r}).read().endswith("\\n")
resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
log.tick()
log.close()
"""
    proc = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert int(proc.stdout.split()[0]) > 0  # some records had to wait
    assert "cannot write" in proc.stderr and "again" in proc.stderr
    lines = (tmp_path / "r.jsonl").read_text().splitlines()
    assert [json.loads(x)["frame_id"] for x in lines] == list(range(20))  # all whole, in order


# 9. a crashed worker's frames, and only its, become ERROR

def test_crash_closes_only_the_frames_the_dead_stage_held():
    from pipeline.collector import Collector

    c = Collector(timeout_ns=30_000_000_000)
    for fid in range(6):
        c.register(fid, f"f{fid}", 0, now_ns=0)
    c.add(0, {"frame_id": 0, "verdict": "OK"})
    assert c.crash([2, 3], "infer1 stage crashed", deadline_ns=1_000) == 2
    c.add(3, {"frame_id": 3, "verdict": "NG"}, now_ns=500)  # its verdict came within the grace: it wins
    c.expire(2_000)
    assert c.release()[0]["frame_id"] == 0 and c.next_id == 1  # frame 1 (a surviving worker's) still open
    c.add(1, {"frame_id": 1, "verdict": "OK"})
    out = {r["frame_id"]: r for r in c.release()}
    assert out[2]["verdict"] == "ERROR" and out[3]["verdict"] == "NG" and 4 not in out
    for fid in (4, 5):
        c.add(fid, {"frame_id": fid, "verdict": "OK"})
    assert [r["verdict"] for r in c.release()] == ["OK", "OK"]


@pytest.mark.slow
def test_killed_infer_worker_closes_only_its_own_frames(slow_line, tmp_path):
    config, seq = slow_line
    results = tmp_path / "r.jsonl"
    run = Run(["--config", str(config), "--source", f"replay:{seq}", "--results", str(results), "--quiet",
               "--workers", "2"], tmp_path / "run")
    run.wait_for(lambda: results.is_file() and len(read_records(results)) >= 5)
    (worker1,) = [p for p in run.stage_pids("infer") if Path(f"/proc/{p}/cmdline").read_bytes().endswith(b"--worker\x001\x00")]
    os.kill(worker1, signal.SIGKILL)
    assert run.finish() == 0, run.err
    records = assert_one_record_per_frame(results, 40)
    crashed = [r for r in records if "crashed" in r["reason"]]
    held = [int(x.split("holding ")[1].split()[0]) for x in run.lines if "crashed holding" in x]
    assert held and len(crashed) <= sum(held) <= 2  # one frame at a time at this pace, not every frame in flight
    assert sum(r["verdict"] in ("OK", "NG", "NO_PART") for r in records) >= 40 - 8 - len(crashed)
    assert run.leftover() == []


# 10. a camera that is not there: Ctrl-C stops at once, one clear line; an empty folder is an error

@pytest.mark.slow
def test_missing_camera_stops_on_one_ctrl_c(line, tmp_path):
    if Path("/dev/video0").exists():
        pytest.skip("this machine has a camera 0")
    config, _ = line
    run = Run(["--config", str(config), "--source", "camera0", "--quiet"], tmp_path / "run")
    run.wait_for(lambda: "cannot open camera index 0" in run.err, timeout=90)
    t0 = time.monotonic()
    run.proc.send_signal(signal.SIGINT)
    code = run.finish(timeout=60)
    assert time.monotonic() - t0 < 15  # not the 60 s reconnect window
    assert code == 130, run.err
    assert "[ WARN" not in run.err and "[ERROR" not in run.err and "Traceback" not in run.err, run.err
    assert run.leftover() == []


def test_empty_folder_source_is_an_error(line, tmp_path):
    config, _ = line
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("no frames here")
    run = Run(["--config", str(config), "--source", f"dir:{tmp_path / 'empty'}", "--quiet"], tmp_path / "run")
    assert run.finish() == 2
    assert "no images in this folder" in run.err and "Traceback" not in run.err


def test_onnx_structure_check_catches_damaged_files(tmp_path):
    from engines.artifact import ArtifactError, check_onnx_file

    good = (ROOT / "engines" / "models" / "magnetic_tile" / "model.onnx").read_bytes()
    check_onnx_file(ROOT / "engines" / "models" / "magnetic_tile" / "model.onnx")
    for bad in (good[:1000], good[:-10], b"", b"\x08\x07garbage" * 100, good[: len(good) // 2]):
        (tmp_path / "m.onnx").write_bytes(bad)
        with pytest.raises(ArtifactError, match="not a readable ONNX model"):
            check_onnx_file(tmp_path / "m.onnx")
