"""The source stage in process, with real ZeroMQ sockets: frames a live source has queued go out as
soon as preprocessing takes them, not only when the camera delivers its next frame."""
import json
import threading
import time

import cv2
import numpy as np
import zmq

from pipeline.config import LineConfig
from pipeline.sequence import INDEX
from pipeline.stages import source as source_stage
from pipeline.stages._common import HoldingNote, Stage
from pipeline.transport import make_socket, recv


def _sequence(folder, times_s):
    folder.mkdir()
    for i in range(len(times_s)):
        cv2.imwrite(str(folder / f"{i:03d}.png"), np.full((480, 640, 3), 40 * i % 255, np.uint8))
    (folder / INDEX).write_text("".join(json.dumps({"file": f"{i:03d}.png", "capture_ns": int(t * 1e9)}) + "\n"
                                        for i, t in enumerate(times_s)))
    return folder


def _take(frames, taken, timeout_ms=100):
    """One frame off the frames socket, noted as taken the way the preprocess stage notes it: its
    id, or None when none came within ``timeout_ms``."""
    msg = recv(frames, timeout_ms)
    if msg is None:
        return None
    taken.write([msg[0]["frame_id"]])
    return msg[0]["frame_id"]


def test_live_source_sends_queued_frames_while_it_waits_for_the_next(tmp_path):
    """Four frames 50 ms apart, then a fifth 2.5 s later, replayed at recorded pace (a live source).
    Preprocessing takes nothing for 0.6 s, so frames queue in the stage (one per socket buffer, the
    rest in its own queue); once it reads, all four must come long before the fifth frame is due.
    Before the reader thread, a queued frame waited for the next camera frame to push it out."""
    cfg = LineConfig()
    cfg.source.realtime = True
    seq = _sequence(tmp_path / "seq", [0.0, 0.05, 0.1, 0.15, 2.5])
    stage = Stage(cfg, tmp_path / "run")
    (tmp_path / "run").mkdir()
    frames = make_socket(stage.ctx, zmq.PULL, stage.ep("frames"), bind=True, hwm=1)
    others = [make_socket(stage.ctx, zmq.PULL, stage.ep(name), bind=True) for name in ("verdict", "status")]
    taken = HoldingNote(stage.run_dir, "preprocess")  # as preprocessing notes each frame it takes
    t0 = time.monotonic()
    worker = threading.Thread(target=source_stage.run, args=(stage, f"replay:{seq}"), daemon=True)
    worker.start()
    try:
        time.sleep(0.6)
        got = []
        while len(got) < 5 and time.monotonic() - t0 < 10:
            fid = _take(frames, taken)
            if fid is not None:
                got.append((fid, time.monotonic() - t0))
        worker.join(timeout=5)
        assert [fid for fid, _ in got] == [0, 1, 2, 3, 4]  # none dropped: the queue (4) held them
        assert max(t for fid, t in got if fid < 4) < 1.5, got  # not held back until the fifth frame (2.5 s)
        assert got[-1][1] >= 2.4
        assert not worker.is_alive()
    finally:
        for sock in (frames, *others):
            sock.close(linger=0)
        stage.close()


def test_a_replay_ends_only_once_preprocessing_has_taken_its_last_frame(tmp_path):
    """A replay as fast as possible into a line that is busy for longer than the sockets' linger
    (2 s): the source must not close while frames still wait in ZeroMQ's
    queues. Before it waited for the hand-over, the last frames were discarded on close and became
    ERROR records ("no result within 30 s") though nothing had failed."""
    from pipeline.transport import LINGER_MS

    cfg = LineConfig()
    seq = _sequence(tmp_path / "seq", [0.0, 0.1, 0.2])  # all fit in the sockets' queues: the source is done sending
    (tmp_path / "run").mkdir()
    stage = Stage(cfg, tmp_path / "run")
    line = zmq.Context()  # the rest of the line: another process's sockets
    frames = make_socket(line, zmq.PULL, stage.ep("frames"), bind=True, hwm=1)
    others = [make_socket(line, zmq.PULL, stage.ep(name), bind=True) for name in ("verdict", "status")]
    taken = HoldingNote(stage.run_dir, "preprocess")  # as preprocessing notes each frame it takes
    got = []

    def take(count, within_s):
        end = time.monotonic() + within_s
        while len(got) < count and time.monotonic() < end:
            fid = _take(frames, taken)
            if fid is not None:
                got.append(fid)

    def source():
        source_stage.run(stage, f"replay:{seq}")
        stage.close()  # as run_stage does: the context ends, and with it whatever was not delivered

    worker = threading.Thread(target=source, daemon=True)
    worker.start()
    try:
        time.sleep(LINGER_MS / 1000 + 1.5)  # the line behind is busy
        waiting = worker.is_alive()  # still waiting for its last frame to be taken
        take(3, 5.0)
        assert got == [0, 1, 2]  # nothing discarded
        assert waiting
        worker.join(timeout=5)
        assert not worker.is_alive()
    finally:
        for sock in (frames, *others):
            sock.close(linger=0)
        line.term()


def test_the_hand_over_wait_is_bounded_and_ends_on_stop(tmp_path):
    """Nobody takes the frames (preprocessing is dead): the source gives up after frame_timeout_s,
    and at once when it is stopped."""
    cfg = LineConfig()
    cfg.frame_timeout_s = 0.5
    (tmp_path / "run").mkdir()
    stage = Stage(cfg, tmp_path / "run")
    HoldingNote(stage.run_dir, "preprocess")
    t0 = time.monotonic()
    assert source_stage.wait_handed_over(stage, 3, cfg.frame_timeout_s) is False
    assert 0.5 <= time.monotonic() - t0 < 2.0
    HoldingNote(stage.run_dir, "preprocess").write([3])
    assert source_stage.wait_handed_over(stage, 3, 10.0) is True
    stage.stopping = True
    t0 = time.monotonic()
    assert source_stage.wait_handed_over(stage, 4, 10.0) is False
    assert time.monotonic() - t0 < 0.5
    stage.close()
