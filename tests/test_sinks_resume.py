"""A crashed sinks stage loses no record: the stitch stage keeps what it sent and sends it again on
request, and a resumed sinks stage handles each frame once, in order. Both stages run in process
with real ZeroMQ sockets; the other end of each is played by the test."""
import json
import threading
import time
from pathlib import Path

import zmq

from pipeline.config import LineConfig
from pipeline.stages import sinks as sinks_stage
from pipeline.stages import stitch as stitch_stage
from pipeline.stages._common import Stage
from pipeline.transport import make_socket, recv, send

MODEL = Path(__file__).resolve().parent.parent / "engines" / "models" / "magnetic_tile"


def _record(fid):
    return {"kind": "record", "record": {"frame_id": fid, "source_name": f"f{fid}.png", "capture_ns": time.monotonic_ns(),
                                         "verdict": "NO_PART", "reason": "", "score": None, "defects": []}}


def _close(stage, *sockets):
    for sock in sockets:
        sock.close(linger=0)
    stage.close()


def _ids(path):
    return [json.loads(x)["frame_id"] for x in Path(path).read_text().splitlines()]


def test_resumed_sinks_stage_asks_for_what_it_missed_and_keeps_frame_order(tmp_path):
    run_dir, results = tmp_path / "run", tmp_path / "r.jsonl"
    run_dir.mkdir()
    # The crashed stage had written frames 0-4; frame 5 reached the results file, not the progress note.
    results.write_text("".join(json.dumps({"frame_id": i}) + "\n" for i in range(6)) + '{"frame_id": 6, "verd')
    (run_dir / sinks_stage.PROGRESS).write_text("4")
    stage = Stage(LineConfig(), run_dir)
    stitch_in = make_socket(stage.ctx, zmq.PULL, stage.ep("verdict"), bind=True)
    to_sinks = make_socket(stage.ctx, zmq.PUSH, stage.ep("results"), bind=False, hwm=100)
    status = make_socket(stage.ctx, zmq.PULL, stage.ep("status"), bind=True)
    try:
        worker = threading.Thread(target=sinks_stage.run, args=(stage, str(results), True), daemon=True)
        worker.start()
        ask = recv(stitch_in, 10_000)
        assert ask is not None and (ask[0]["kind"], ask[0]["from"]) == ("resend", 6)  # after the results file's last full line
        # What was queued for the new process comes before the resend: later frames first, and a repeat.
        for fid in (8, 9, 4, 6, 7, 8, 9):
            send(to_sinks, _record(fid))
        send(to_sinks, {"kind": "end", "count": 10})
        worker.join(timeout=10)
        assert not worker.is_alive()
    finally:
        _close(stage, stitch_in, to_sinks, status)
    assert _ids(results) == list(range(10))  # the cut-off line removed, each frame once, in order
    assert (run_dir / sinks_stage.PROGRESS).read_text() == "9"


def test_stitch_stage_sends_again_what_it_sent(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    cfg = LineConfig()
    cfg.inference.model = str(MODEL)
    stage = Stage(cfg, run_dir)
    to_stitch = make_socket(stage.ctx, zmq.PUSH, stage.ep("verdict"), bind=False)
    from_stitch = make_socket(stage.ctx, zmq.PULL, stage.ep("results"), bind=True)
    status = make_socket(stage.ctx, zmq.PULL, stage.ep("status"), bind=True)
    worker = threading.Thread(target=stitch_stage.run, args=(stage,), daemon=True)
    worker.start()
    try:
        for fid in range(4):
            send(to_stitch, {"kind": "register", "frame_id": fid, "source_name": f"f{fid}.png", "capture_ns": time.monotonic_ns()})
            lost = {"camera_lost": True} if fid == 1 else {}  # passed on to the sinks: the PLC's heartbeat pauses
            send(to_stitch, {"kind": "result", "frame_id": fid, "source_name": f"f{fid}.png",
                             "capture_ns": time.monotonic_ns(), "verdict": "NO_PART", "reason": "no part in view", **lost})
        send(to_stitch, {"kind": "end", "count": 4})

        lost_flags = []

        def take(n):
            got = []
            while len(got) < n:
                msg = recv(from_stitch, 10_000)
                assert msg is not None, got
                got.append(msg[0]["record"]["frame_id"] if msg[0]["kind"] == "record" else "end")
                lost_flags.append(msg[0].get("record", {}).get("camera_lost", False))
            return got

        assert take(5) == [0, 1, 2, 3, "end"]
        assert lost_flags == [False, True, False, False, False]
        send(to_stitch, {"kind": "resend", "from": 2})  # the end is done, yet the stage is still there for this
        assert take(3) == [2, 3, "end"]
        assert worker.is_alive()
        stage.stopping = True  # what SIGTERM from the supervisor does
        worker.join(timeout=5)
        assert not worker.is_alive()
    finally:
        _close(stage, to_stitch, from_stitch, status)


def test_resend_buffer_keeps_verdicts_longer_than_overlay_arrays():
    buf = stitch_stage.ResendBuffer(window=5, arrays=2)
    for fid in range(6):
        buf.add(fid, {"frame_id": fid}, {"frame": fid} if fid % 2 else None)
    buf.add(None, {"kind": "end"})
    again, oldest = buf.since(3)
    assert oldest == 2  # frames 0 and 1 fell out of the window
    assert [h.get("frame_id", "end") for h, _ in again] == [3, 4, 5, "end"]
    assert [a for _, a in again] == [{"frame": 3}, {}, {"frame": 5}, {}]  # frame 1's arrays gave way first
    assert len(buf.since(0)[0]) == 5
