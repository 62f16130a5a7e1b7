"""Frame sources, chosen by URI: ``camera0``, ``video:FILE``, ``dir:DIR``, ``replay:SEQ``, ``rtsp://...``.

A source yields :class:`SourceItem`; a frame that cannot be read is yielded with ``frame=None`` and
a reason, so it still gets a result record. ``live`` sources (cameras, streams, and a replay
at recorded pace, which stands in for a camera) may drop frames under overload; file sources and
an as-fast-as-possible replay never do.
"""
from __future__ import annotations

import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import cv2
import numpy as np

from engines.data import IMAGE_SUFFIXES
from pipeline.config import SourceConfig
from pipeline.sequence import read_index


@dataclass
class SourceItem:
    name: str
    frame: np.ndarray | None
    reason: str = ""
    recorded_ns: int | None = None


class Source:
    live = False

    def __iter__(self) -> Iterator[SourceItem]:
        raise NotImplementedError

    def close(self) -> None:
        pass


def _decode(path: Path) -> tuple[np.ndarray | None, str]:
    try:
        data = np.fromfile(str(path), np.uint8)
    except OSError as exc:
        return None, f"cannot read {path.name}: {exc}"
    if data.size == 0:
        return None, f"{path.name}: empty file"
    frame = cv2.imdecode(data, cv2.IMREAD_COLOR)
    if frame is None:
        return None, f"{path.name}: not a decodable image"
    return frame, ""


class DirSource(Source):
    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        if not self.folder.is_dir():
            raise FileNotFoundError(f"dir:{folder}: no such folder")
        self.files = sorted(p for p in self.folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)

    def __iter__(self) -> Iterator[SourceItem]:
        for path in self.files:
            frame, reason = _decode(path)
            yield SourceItem(path.name, frame, reason)


class ReplaySource(Source):
    def __init__(self, folder: str | Path, realtime: bool = False) -> None:
        self.folder = Path(folder)
        self.entries = read_index(self.folder)
        self.realtime = realtime
        self.live = realtime  # at recorded pace a replay stands in for the camera, drops included

    def __iter__(self) -> Iterator[SourceItem]:
        start_wall, start_rec = time.monotonic_ns(), None
        for e in self.entries:
            if self.realtime:
                start_rec = e["capture_ns"] if start_rec is None else start_rec
                wait = (e["capture_ns"] - start_rec) - (time.monotonic_ns() - start_wall)
                if wait > 0:
                    time.sleep(wait / 1e9)
            frame, reason = _decode(self.folder / e["file"])
            yield SourceItem(e["file"], frame, reason, e["capture_ns"])


class CaptureSource(Source):
    """OpenCV capture: a camera index, an RTSP URL or a video file."""

    def __init__(self, target: int | str, cfg: SourceConfig, live: bool) -> None:
        self.live = live
        self.cap = cv2.VideoCapture(target)
        if not self.cap.isOpened():
            raise FileNotFoundError(f"source {target!r}: cannot open (check the device index, URL or file)")
        if isinstance(target, int):
            self.cap.set(cv2.CAP_PROP_FRAME_WIDTH, cfg.camera.width)
            self.cap.set(cv2.CAP_PROP_FRAME_HEIGHT, cfg.camera.height)
            self.cap.set(cv2.CAP_PROP_FPS, cfg.camera.fps)
            if cfg.camera.exposure is not None:
                self.cap.set(cv2.CAP_PROP_EXPOSURE, cfg.camera.exposure)
        self.label = str(target)

    def __iter__(self) -> Iterator[SourceItem]:
        n = 0
        while True:
            ok, frame = self.cap.read()
            if not ok:
                return
            yield SourceItem(f"{self.label}#{n:06d}", frame)
            n += 1

    def close(self) -> None:
        self.cap.release()


def open_source(uri: str, cfg: SourceConfig | None = None) -> Source:
    cfg = cfg or SourceConfig()
    if m := re.fullmatch(r"camera(\d+)", uri):
        return CaptureSource(int(m.group(1)), cfg, live=True)
    if uri.startswith(("rtsp://", "http://", "https://")):
        return CaptureSource(uri, cfg, live=True)
    if uri.startswith("video:"):
        path = uri[len("video:"):]
        if not Path(path).is_file():
            raise FileNotFoundError(f"{uri}: no such video file")
        return CaptureSource(path, cfg, live=False)
    if uri.startswith("dir:"):
        return DirSource(uri[len("dir:"):])
    if uri.startswith("replay:"):
        return ReplaySource(uri[len("replay:"):], cfg.realtime)
    raise ValueError(f"source {uri!r}: expected cameraN, video:FILE, dir:DIR, replay:SEQ or rtsp://...")


def check_uri(uri: str) -> None:
    """Fail fast, before any process starts, on a malformed URI or a missing file or folder."""
    if re.fullmatch(r"camera(\d+)", uri) or uri.startswith(("rtsp://", "http://", "https://")):
        return
    for prefix, kind in (("video:", "file"), ("dir:", "folder"), ("replay:", "folder")):
        if uri.startswith(prefix):
            path = Path(uri[len(prefix):])
            if not (path.is_file() if kind == "file" else path.is_dir()):
                raise FileNotFoundError(f"source {uri!r}: no such {kind} {path}")
            if prefix == "replay:":
                read_index(path)
            return
    raise ValueError(f"source {uri!r}: expected cameraN, video:FILE, dir:DIR, replay:SEQ or rtsp://...")
