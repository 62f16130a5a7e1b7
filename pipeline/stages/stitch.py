"""Stitch/alert stage: tile maps -> canonical map -> verdict and defects in camera pixels; exactly
one record per frame, released in frame order to the sinks process.

It notes the last frame it released in ``RUN_DIR/stitch.progress``, and every frame registered in
``RUN_DIR/stitch.frames``; restarted with ``--resume`` after a crash, it goes on from the next one
(the collector closes the frames that only the crashed stage knew with an ERROR record, named from
that journal).

The last ``RESEND_WINDOW`` messages sent to the sinks are kept, and a restarted sinks stage asks for
those it had not handled (``{"kind": "resend", "from": FRAME_ID}``), so a sinks crash loses no
record. For that the stage stays up after the end of the stream until it is told to stop.
"""
from __future__ import annotations

import collections
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import zmq

from engines.artifact import ModelMeta
from pipeline.collector import Collector
from pipeline.processing import decide
from pipeline.stages._common import POLL_MS, Stage, note_progress, read_progress, run_stage, stage_parser
from pipeline.transport import StatusReporter, make_socket, recv, send
from pipeline.vision.tiling import MapRule, TileGrid
from pipeline.wire import WireError

# Records kept for a restarted sinks stage: those the dead process had received but not handled,
# a few normally, more when the sinks fell behind. Only the newest RESEND_ARRAYS keep their overlay
# arrays (a camera frame and an fp16 map, about 1 MB at 640x480): an older one is sent again without
# its overlay image, never without its verdict.
RESEND_WINDOW = 2048
RESEND_ARRAYS = 32
PROGRESS = "stitch.progress"
# The frames registered, one JSON line each, so that a restarted stage can name those lost with
# this one; rotated every JOURNAL_LINES lines (the file before kept as stitch.frames.1). Frames in
# flight are far fewer.
JOURNAL = "stitch.frames"
JOURNAL_LINES = 4096


def _rotated(path: Path) -> Path:
    """Where the journal before the current one is kept."""
    return path.with_name(path.name + ".1")


class FrameJournal:
    """``[frame_id, capture_ns, source_name]`` per registered frame, appended line by line: a line
    written is the OS's, so a killed stage leaves every whole line behind."""

    def __init__(self, path: Path, resume: bool, lines: int = JOURNAL_LINES) -> None:
        self.path, self.lines, self.n = path, lines, 0
        if not resume:  # a run folder used again: an earlier run's frames must not name this run's
            _rotated(path).unlink(missing_ok=True)
        self.file = open(path, "a" if resume else "w", encoding="utf-8", buffering=1)  # line-buffered

    def add(self, frame_id: int, capture_ns: int, source_name: str) -> None:
        if self.n >= self.lines:
            self.file.close()
            os.replace(self.path, _rotated(self.path))
            self.file = open(self.path, "w", encoding="utf-8", buffering=1)
            self.n = 0
        self.file.write(json.dumps([frame_id, capture_ns, source_name]) + "\n")
        self.n += 1

    def close(self) -> None:
        self.file.close()

    @staticmethod
    def read(path: Path) -> dict[int, dict]:
        """frame_id -> {source_name, capture_ns} from the journal and the file before it; a torn
        or unreadable line (a crash mid-write) is skipped."""
        out: dict[int, dict] = {}
        for file in (_rotated(path), path):
            if not file.is_file():
                continue
            for line in file.read_text(encoding="utf-8", errors="replace").splitlines():
                try:
                    fid, capture_ns, name = json.loads(line)
                    out[int(fid)] = {"source_name": str(name), "capture_ns": int(capture_ns)}
                except (ValueError, TypeError):
                    continue
        return out


class ResendBuffer:
    """The messages sent to the sinks, newest ``window`` kept, the newest ``arrays`` of them with
    their arrays; the end of the stream is kept as frame None."""

    def __init__(self, window: int = RESEND_WINDOW, arrays: int = RESEND_ARRAYS) -> None:
        self.sent: collections.deque = collections.deque(maxlen=window)  # (frame_id or None, header)
        self.arrays: collections.OrderedDict = collections.OrderedDict()  # frame_id -> arrays
        self.max_arrays = arrays

    def add(self, frame_id: int | None, header: dict, arrays: dict | None = None) -> None:
        self.sent.append((frame_id, header))
        if arrays:
            self.arrays[frame_id] = arrays
            if len(self.arrays) > self.max_arrays:
                self.arrays.popitem(last=False)

    def since(self, frame_id: int) -> tuple[list[tuple[dict, dict]], int | None]:
        """(header, arrays) of every message from ``frame_id`` on, and the oldest frame still kept."""
        again = [(h, self.arrays.get(fid, {})) for fid, h in self.sent if fid is None or fid >= frame_id]
        oldest = next((fid for fid, _ in self.sent if fid is not None), None)
        return again, oldest


def record_from_maps(header: dict, arrays: dict, cfg, pixel_t: float, image_t: float,
                     rule: MapRule = MapRule()) -> tuple[dict, dict]:
    grid = TileGrid.from_dict(header["grid"])
    coarse_grid = TileGrid.from_dict(header["coarse_grid"]) if "coarse_grid" in header else None
    H = np.asarray(header["H"], np.float64).reshape(3, 3)
    v = decide(arrays["maps"].astype(np.float32), arrays["scores"], arrays["tile_index"], grid, arrays["part_mask"],
               H, cfg.decision, pixel_t, image_t, coarse_grid, rule)
    t_done = time.monotonic_ns()
    stage_ms = {"preprocess": (header["t_pre_ns"][1] - header["t_pre_ns"][0]) / 1e6,
                "queue_to_infer": (header["t_infer_ns"][0] - header["t_pre_ns"][1]) / 1e6,
                "infer": (header["t_infer_ns"][1] - header["t_infer_ns"][0]) / 1e6,
                "stitch": (t_done - header["t_infer_ns"][1]) / 1e6}
    record = {"frame_id": header["frame_id"], "source_name": header["source_name"], "capture_ns": header["capture_ns"],
              "verdict": v.verdict, "reason": "", "score": round(v.score, 4), "defects": v.defects,
              "stage_ms": {k: round(x, 2) for k, x in stage_ms.items()}}
    extra = {}
    if "frame" in arrays and v.verdict == "NG":
        extra = {"frame": arrays["frame"], "anomaly_map": v.anomaly_map, "H": H}
    return record, extra


def run(stage: Stage, resume: bool = False) -> int:
    cfg = stage.cfg
    meta = ModelMeta.load(cfg.inference.model)
    pixel_t = cfg.decision.pixel_threshold if cfg.decision.pixel_threshold is not None else meta.pixel_threshold
    image_t = cfg.decision.image_threshold if cfg.decision.image_threshold is not None else meta.image_threshold
    inbox = make_socket(stage.ctx, zmq.PULL, stage.ep("verdict"), bind=True, hwm=10000)
    results = make_socket(stage.ctx, zmq.PUSH, stage.ep("results"), bind=False, hwm=10000)
    status = StatusReporter(stage.ctx, stage.ep("status"), "stitch")
    collector = Collector(int(cfg.frame_timeout_s * 1e9))
    progress = stage.run_dir / PROGRESS
    if resume:
        collector.resume(read_progress(progress) + 1, FrameJournal.read(stage.run_dir / JOURNAL))
        print(f"stitch: resumed from frame {collector.next_id}", file=sys.stderr, flush=True)
    journal = FrameJournal(stage.run_dir / JOURNAL, resume)
    extras: dict[int, dict] = {}
    sent = ResendBuffer()
    ended = False

    def emit() -> None:
        now = time.monotonic_ns()
        released = collector.release()
        for rec in released:
            if rec.get("capture_ns") is not None:
                rec["latency_ms"] = round((now - rec["capture_ns"]) / 1e6, 2)
            arrays = extras.pop(rec["frame_id"], {})
            header = {"kind": "record", "record": rec}
            if arrays:
                header["H"] = arrays.pop("H").ravel().tolist()
                arrays["anomaly_map"] = arrays["anomaly_map"].astype(np.float16)
            send(results, header, arrays)
            sent.add(rec["frame_id"], header, arrays)
        if released:  # once per batch: a resumed stage skips what was sent after it (the sinks drop repeats)
            note_progress(progress, released[-1]["frame_id"])

    rule = meta.map_rule()  # the same for every frame
    try:
        while not stage.stopping:
            try:
                msg = recv(inbox, POLL_MS)
            except WireError as exc:
                print(f"stitch: dropped malformed message: {exc}", file=sys.stderr)
                msg = None
            if msg is not None:
                header, arrays = msg
                kind = header.get("kind")
                t0 = time.monotonic_ns()
                if kind == "register":
                    collector.register(header["frame_id"], header["source_name"], header["capture_ns"])
                    journal.add(header["frame_id"], header["capture_ns"], header["source_name"])
                elif kind == "result":
                    collector.add(header["frame_id"], {
                        "frame_id": header["frame_id"], "source_name": header["source_name"],
                        "capture_ns": header["capture_ns"], "verdict": header["verdict"],
                        "reason": header.get("reason", ""), "score": None, "defects": [],
                        **({"camera_lost": True} if header.get("camera_lost") else {})})
                elif kind == "maps":
                    try:
                        record, extra = record_from_maps(header, arrays, cfg, pixel_t, image_t, rule)
                    except Exception as exc:  # one bad frame must not stop the line
                        record, extra = {"frame_id": header["frame_id"], "source_name": header["source_name"],
                                         "capture_ns": header["capture_ns"], "verdict": "ERROR",
                                         "reason": f"stitch failed: {exc!r}", "score": None, "defects": []}, {}
                    collector.add(header["frame_id"], record)
                    if extra:
                        extras[header["frame_id"]] = extra
                    status.add(busy_ms=(time.monotonic_ns() - t0) / 1e6)
                elif kind == "crash":
                    n = collector.fail_pending(f"{header['stage']} stage crashed while the frame was in flight",
                                               header["at_ns"])
                    print(f"stitch: {n} in-flight frame(s) marked ERROR after {header['stage']} crash", file=sys.stderr)
                elif kind == "end":
                    collector.end(header["count"])
                elif kind == "source_gone":
                    collector.source_gone()
                elif kind == "resend":  # a restarted sinks stage: what it had not handled, in order
                    again, oldest = sent.since(header["from"])
                    if oldest is not None and oldest > header["from"]:
                        print(f"stitch: the sinks stage asked for records from frame {header['from']}, but only "
                              f"those from frame {oldest} are kept (RESEND_WINDOW {RESEND_WINDOW})", file=sys.stderr)
                    for h, a in again:
                        send(results, h, a)
                    print(f"stitch: sent {len(again)} record(s) again to the restarted sinks stage", file=sys.stderr)
            collector.expire(time.monotonic_ns())
            emit()
            if collector.finished and not ended:
                end = {"kind": "end", "count": collector.expected}
                send(results, end)
                sent.add(None, end)
                ended = True  # stays up for a sinks stage that may yet need records again
            status.flush()
    finally:
        journal.close()
        status.close()
        inbox.close()
        results.close()
    return 0


def main(argv: list[str] | None = None) -> int:
    p = stage_parser("stitch")
    p.add_argument("--resume", action="store_true", help="restarted after a crash: go on after the last frame released")
    return run_stage(p, argv, lambda stage, a: run(stage, a.resume))


if __name__ == "__main__":
    sys.exit(main())
