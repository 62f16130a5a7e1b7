"""Stitch/alert stage: tile maps -> canonical map -> verdict and defects in camera pixels; exactly
one record per frame, released in frame order to the sinks process.

It notes the last frame it released in ``RUN_DIR/stitch.progress``, every frame registered and the
end of the stream in ``RUN_DIR/stitch.frames``, and every record released in
``RUN_DIR/stitch.records`` (pipeline.journal). Restarted with ``--resume`` after a crash, it goes on
after the last record released; it knows the frames and the stream's count from its own journal
and the source's, closes the frames that only the crashed stage knew with an ERROR record, and can
send again the records its predecessor released but the sinks never received.

The last ``RESEND_WINDOW`` messages sent to the sinks are kept, and a restarted sinks stage asks for
those it had not handled (``{"kind": "resend", "from": FRAME_ID}``), so a sinks crash loses no
record. For that the stage stays up after the end of the stream until it is told to stop.
"""
from __future__ import annotations

import collections
import sys
import time

import numpy as np
import zmq

from engines.artifact import ModelMeta
from pipeline import messages
from pipeline.log import get
from pipeline.collector import Collector
from pipeline.journal import RECORD_JOURNAL, SOURCE_JOURNAL, STITCH_JOURNAL, FrameJournal, RecordJournal
from pipeline.processing import decide
from pipeline.stages._common import POLL_MS, Stage, note_progress, read_progress, run_stage, stage_parser
from pipeline.transport import StatusReporter, make_socket, recv, send
from pipeline.vision.tiling import TileGrid
from pipeline.vision.scoring import MapRule, PartTiles
from pipeline.wire import WireError

# Records kept for a restarted sinks stage: those the dead process had received but not handled,
# a few normally, more when the sinks fell behind. Only the newest RESEND_ARRAYS keep their overlay
# arrays (a camera frame and an fp16 map, about 1 MB at 640x480): an older one is sent again without
# its overlay image, never without its verdict.
RESEND_WINDOW = 2048
RESEND_ARRAYS = 32
PROGRESS = "stitch.progress"
# A frame held by a crashed preprocess or infer stage is closed with ERROR this long after the crash,
# unless its result comes first (one sent just before the crash may still be on its way).
CRASH_GRACE_NS = 1_000_000_000


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
    part = PartTiles(arrays["maps"].astype(np.float32), arrays["scores"], arrays["tile_index"], grid,
                     arrays["part_mask"], coarse_grid)
    v = decide(part, H, cfg.decision, pixel_t, image_t, rule)
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


def resume_state(run_dir, collector: Collector, sent: ResendBuffer) -> None:
    """A restarted stitch stage: go on after the last record released (progress note or record
    journal, whichever is later), know the frames registered and the stream's count from the
    journals of the stage before and of the source, and keep the records released before for the
    sinks stage to ask for."""
    released = RecordJournal.read(run_dir / RECORD_JOURNAL)
    last = max(read_progress(run_dir / PROGRESS), released[-1]["frame_id"] if released else -1)
    source_frames, source_end = FrameJournal.read_all(run_dir / SOURCE_JOURNAL)
    own_frames, own_end = FrameJournal.read_all(run_dir / STITCH_JOURNAL)
    collector.resume(last + 1, {**source_frames, **own_frames})
    count = own_end if own_end is not None else source_end
    if count is not None:
        collector.end(count)
    for rec in released[-RESEND_WINDOW:]:
        sent.add(rec["frame_id"], messages.record(rec))


def run(stage: Stage, resume: bool = False) -> int:
    cfg = stage.cfg
    meta = ModelMeta.load(cfg.inference.model)
    pixel_t = cfg.decision.pixel_threshold if cfg.decision.pixel_threshold is not None else meta.pixel_threshold
    image_t = cfg.decision.image_threshold if cfg.decision.image_threshold is not None else meta.image_threshold
    inbox = make_socket(stage.ctx, zmq.PULL, stage.ep("verdict"), bind=True, hwm=10000)
    results = make_socket(stage.ctx, zmq.PUSH, stage.ep("results"), bind=False, hwm=10000)
    status = StatusReporter(stage.ctx, stage.ep("status"), "stitch")
    collector = Collector(int(cfg.frame_timeout_s * 1e9))
    collector.last_activity_ns = time.monotonic_ns()
    progress = stage.run_dir / PROGRESS
    sent = ResendBuffer()
    if resume:
        resume_state(stage.run_dir, collector, sent)
        get("stitch").info(f"resumed from frame {collector.next_id}")
    journal = FrameJournal(stage.run_dir / STITCH_JOURNAL, resume)
    released_log = RecordJournal(stage.run_dir / RECORD_JOURNAL, resume, lines=RESEND_WINDOW)
    if collector.expected is not None and resume:
        journal.end(collector.expected)
    extras: dict[int, dict] = {}
    ended = False

    def emit() -> None:
        now = time.monotonic_ns()
        released = collector.release()
        for rec in released:
            if rec.get("capture_ns") is not None:
                rec["latency_ms"] = round((now - rec["capture_ns"]) / 1e6, 2)
            arrays = extras.pop(rec["frame_id"], {})
            header = messages.record(rec, arrays.pop("H") if arrays else None)
            if arrays:
                arrays["anomaly_map"] = arrays["anomaly_map"].astype(np.float16)
            released_log.add(rec)  # before sending: a record sent is one a restarted stage can send again
            send(results, header, arrays)
            sent.add(rec["frame_id"], header, arrays)
        if released:  # once per batch: a resumed stage skips what was sent after it (the sinks drop repeats)
            note_progress(progress, released[-1]["frame_id"])

    def handle(header: dict, arrays: dict) -> None:
        kind = header["kind"]
        t0 = time.monotonic_ns()
        if kind == "register":
            collector.register(header["frame_id"], header["source_name"], header["capture_ns"], t0)
            journal.add(header["frame_id"], header["capture_ns"], header["source_name"])
        elif kind == "result":
            collector.add(header["frame_id"], {
                "frame_id": header["frame_id"], "source_name": header["source_name"],
                "capture_ns": header["capture_ns"], "verdict": header["verdict"],
                "reason": header["reason"], "score": None, "defects": [],
                **({"camera_lost": True} if header.get("camera_lost") else {})}, t0)
        elif kind == "maps":
            try:
                record, extra = record_from_maps(header, arrays, cfg, pixel_t, image_t, rule)
            except Exception as exc:  # one bad frame must not stop the line
                record, extra = {"frame_id": header["frame_id"], "source_name": header["source_name"],
                                 "capture_ns": header["capture_ns"], "verdict": "ERROR",
                                 "reason": f"stitch failed: {exc!r}", "score": None, "defects": []}, {}
            collector.add(header["frame_id"], record, t0)
            if extra:
                extras[header["frame_id"]] = extra
            status.add(busy_ms=(time.monotonic_ns() - t0) / 1e6)
        elif kind == "crash":
            n = collector.crash(header["frame_ids"], f"{header['stage']} stage crashed while processing the frame",
                                t0 + CRASH_GRACE_NS)
            get("stitch").warning(f"{header['stage']} crashed holding {n} open frame(s); they become ERROR unless their "
                  f"result comes within {CRASH_GRACE_NS / 1e9:.0f} s")
        elif kind == "abort":
            n = collector.abort(header["reason"])
            get("stitch").warning(f"line stopping ({header['reason']}); {n} open frame(s) marked ERROR")
        elif kind == "end":
            collector.end(header["count"])
            journal.end(header["count"])
        elif kind == "source_gone":
            collector.source_gone()
        elif kind == "resend":  # a sinks stage that missed records: what it had not handled, in order
            again, oldest = sent.since(header["from"])
            if oldest is not None and oldest > header["from"]:
                get("stitch").warning(f"the sinks stage asked for records from frame {header['from']}, but only "
                      f"those from frame {oldest} are kept (RESEND_WINDOW {RESEND_WINDOW})")
            for h, a in again:
                send(results, h, a)
            get("stitch").info(f"sent {len(again)} record(s) again to the sinks stage")
        else:
            get("stitch").warning(f"dropped a {kind} message (not one this stage takes)")
            status.add(processed=0, bad_messages=1)

    rule = meta.map_rule()  # the same for every frame
    try:
        while not stage.stopping:
            try:
                msg = recv(inbox, POLL_MS)
            except WireError as exc:  # counted and logged; the line goes on
                get("stitch").warning(f"dropped malformed message: {exc}")
                status.add(processed=0, bad_messages=1)
                msg = None
            if msg is not None:
                handle(*msg)
            collector.expire(time.monotonic_ns())
            emit()
            if collector.finished and not ended:
                end = messages.end(collector.expected)
                send(results, end)
                sent.add(None, end)
                ended = True  # stays up for a sinks stage that may yet need records again
            status.flush()
    finally:
        journal.close()
        released_log.close()
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
