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
from pipeline.stages._common import Stage
from pipeline.transport import make_socket, recv


def _sequence(folder, times_s):
    folder.mkdir()
    for i in range(len(times_s)):
        cv2.imwrite(str(folder / f"{i:03d}.png"), np.full((480, 640, 3), 40 * i % 255, np.uint8))
    (folder / INDEX).write_text("".join(json.dumps({"file": f"{i:03d}.png", "capture_ns": int(t * 1e9)}) + "\n"
                                        for i, t in enumerate(times_s)))
    return folder


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
    t0 = time.monotonic()
    worker = threading.Thread(target=source_stage.run, args=(stage, f"replay:{seq}"), daemon=True)
    worker.start()
    try:
        time.sleep(0.6)
        got = []
        while len(got) < 5 and time.monotonic() - t0 < 10:
            msg = recv(frames, 100)
            if msg is not None:
                got.append((msg[0]["frame_id"], time.monotonic() - t0))
        worker.join(timeout=5)
        assert [fid for fid, _ in got] == [0, 1, 2, 3, 4]  # none dropped: the queue (4) held them
        assert max(t for fid, t in got if fid < 4) < 1.5, got  # not held back until the fifth frame (2.5 s)
        assert got[-1][1] >= 2.4
        assert not worker.is_alive()
    finally:
        for sock in (frames, *others):
            sock.close(linger=0)
        stage.close()
