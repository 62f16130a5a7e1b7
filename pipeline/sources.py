"""Frame sources, chosen by URI: ``camera0``, ``video:FILE``, ``dir:DIR``, ``replay:SEQ``, ``rtsp://...``.

A source yields :class:`SourceItem`; a frame that cannot be read is yielded with ``frame=None`` and
a reason, so it still gets a result record. ``live`` sources (cameras, streams, and a replay
at recorded pace, which stands in for a camera) may drop frames under overload; file sources and
an as-fast-as-possible replay never do.
"""
from __future__ import annotations

import os
import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Mapping

import cv2
import numpy as np

from engines.data import IMAGE_SUFFIXES
from pipeline.log import get
from pipeline.config import CameraConfig, SourceConfig, StreamConfig
from pipeline.redact import without_credentials
from pipeline.sequence import read_index

__all__ = ["SOURCE_ENV", "Source", "SourceItem", "check_uri", "expand_env", "open_source", "without_credentials"]


@dataclass
class SourceItem:
    name: str
    frame: np.ndarray | None
    reason: str = ""
    recorded_ns: int | None = None
    camera_lost: bool = False  # no frame: the camera stopped delivering (the PLC's heartbeat pauses)


class Source:
    live = False

    def __iter__(self) -> Iterator[SourceItem]:
        raise NotImplementedError

    def close(self) -> None:
        pass


def decode_frame(path: Path) -> tuple[np.ndarray | None, str]:
    """A recorded frame file as the line reads it: ``(frame, "")``, or ``(None, why)`` for a file
    that cannot be read or decoded (such a frame gets an ERROR record, never a crash)."""
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


def image_files(folder: Path) -> list[Path]:
    """The images of a ``dir:`` source, by name; FileNotFoundError naming the folder when there are none."""
    if not folder.is_dir():
        raise FileNotFoundError(f"dir:{folder}: no such folder")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise FileNotFoundError(f"dir:{folder}: no images in this folder (looked for "
                                f"{', '.join(sorted(IMAGE_SUFFIXES))}); point it at the folder holding the frames")
    return files


class DirSource(Source):
    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        self.files = image_files(self.folder)

    def __iter__(self) -> Iterator[SourceItem]:
        for path in self.files:
            frame, reason = decode_frame(path)
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
            frame, reason = decode_frame(self.folder / e["file"])
            yield SourceItem(e["file"], frame, reason, e["capture_ns"])


# Waits between attempts to reopen a lost camera or stream (the last one repeats).
RECONNECT_WAITS_S = (0.5, 1.0, 2.0, 4.0, 5.0)


def ffmpeg_options(stream: StreamConfig) -> str:
    """OpenCV's FFmpeg capture options (``OPENCV_FFMPEG_CAPTURE_OPTIONS``) for a network camera."""
    opts = [f"rtsp_transport;{stream.transport}"]
    if stream.low_latency:  # FFmpeg probes a stream for about 2 s by default and hands out that backlog first
        opts += ["fflags;nobuffer", "analyzeduration;100000", "probesize;32768"]
    return "|".join(opts)


def camera_mismatch(requested: CameraConfig, width: float, height: float, fps: float) -> str | None:
    """What a camera gives instead of what ``source.camera`` asked for, or None. A camera that ignores
    the requested size changes the part's size in pixels, so the line's calibration no longer fits."""
    problems = []
    if (int(width), int(height)) != (requested.width, requested.height):
        problems.append(f"{int(width)}x{int(height)} px instead of source.camera.width/height "
                        f"{requested.width}x{requested.height}; run calibrate_line on frames of this size, or set "
                        "a size the camera supports")
    if fps > 0 and abs(fps - requested.fps) > 0.5:
        problems.append(f"{fps:g} frames/s instead of source.camera.fps {requested.fps:g}")
    return "; ".join(problems) or None


# The source stage reads its URI from this environment variable, not from its command line, which
# every user of the machine can read (``ps``); a camera URL may carry a password.
SOURCE_ENV = "TILEGUARD_SOURCE"
_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


def expand_env(uri: str, environ: Mapping[str, str] | None = None) -> str:
    """``rtsp://${CAM_USER}:${CAM_PASS}@host/path`` with the values from the environment, so that a
    camera's password need not be typed on a command line or into a unit file."""
    env = os.environ if environ is None else environ
    missing = sorted({name for name in _ENV_REF.findall(uri) if name not in env})
    if missing:
        several = len(missing) > 1
        raise ValueError(f"source {uri!r}: environment variable{'s' if several else ''} {', '.join(missing)} "
                         f"{'are' if several else 'is'} not set; set {'them' if several else 'it'} "
                         "(a service: in its EnvironmentFile) or write the value into the address")
    return _ENV_REF.sub(lambda m: env[m.group(1)], uri)




class CaptureSource(Source):
    """OpenCV capture: a camera index, an RTSP/HTTP URL or a video file.

    A live one (camera, stream) that stops delivering is reopened, waiting ``RECONNECT_WAITS_S``
    between attempts, for up to ``source.reconnect_s``; each loss is yielded as an item without a
    frame, so the results say when the line saw nothing. Past that window it raises
    ``ConnectionError``. A video file simply ends."""

    def __init__(self, target: int | str, cfg: SourceConfig, live: bool, stop: threading.Event | None = None) -> None:
        self.target, self.cfg, self.live = target, cfg, live
        self.label = without_credentials(str(target))  # frame names go to the results, the MES and the logs
        # Set by the stage on stop (Ctrl-C, SIGTERM): also ends a wait for a camera that is not there yet.
        self._closed = stop if stop is not None else threading.Event()
        self._lock = threading.Lock()
        self.cap = self._open()
        if self.cap is None:
            if not live:
                raise FileNotFoundError(f"source {target!r}: cannot open (check the file)")
            get(f"source {self.label}").warning(f"cannot open {self._what()}; retrying for up to {cfg.reconnect_s:.0f} s "
                  "(source.reconnect_s; Ctrl-C stops)")
            self.cap = self._reopen(time.monotonic(), "cannot open it")
            if self.cap is None:
                raise ConnectionError(f"source {self.label}: stopped while waiting for it to appear")

    def _what(self) -> str:
        if isinstance(self.target, int):
            return (f"camera index {self.target} (no such camera, or it is in use: check `ls /dev/video*` and that "
                    "no other program holds it)")
        return "the stream (check the URL, the camera's power and network)"

    def _open(self) -> cv2.VideoCapture | None:
        if isinstance(self.target, int):
            # OpenCV's own warnings for a missing camera (one per backend tried) would bury the one
            # line that says what to do; this class prints that line.
            cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)
            cap = cv2.VideoCapture(self.target)
            cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_WARNING)
            if cap.isOpened():
                cam = self.cfg.camera
                cap.set(cv2.CAP_PROP_FRAME_WIDTH, cam.width)
                cap.set(cv2.CAP_PROP_FRAME_HEIGHT, cam.height)
                cap.set(cv2.CAP_PROP_FPS, cam.fps)
                if cam.exposure is not None:
                    cap.set(cv2.CAP_PROP_EXPOSURE, cam.exposure)
                warning = camera_mismatch(cam, cap.get(cv2.CAP_PROP_FRAME_WIDTH), cap.get(cv2.CAP_PROP_FRAME_HEIGHT),
                                          cap.get(cv2.CAP_PROP_FPS))
                if warning:
                    get(f"source {self.label}").warning(f"warning: {warning}")
        elif self.live:  # network camera: read when opening, by this process's FFmpeg
            stream = self.cfg.stream
            os.environ["OPENCV_FFMPEG_CAPTURE_OPTIONS"] = ffmpeg_options(stream)
            # FFmpeg still says why a connection failed; OpenCV's own warning after it would only
            # add that no other backend takes a URL.
            cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)
            cap = cv2.VideoCapture(self.target, cv2.CAP_FFMPEG,
                                   [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, int(stream.open_timeout_s * 1000),
                                    cv2.CAP_PROP_READ_TIMEOUT_MSEC, int(stream.read_timeout_s * 1000)])
        else:
            cap = cv2.VideoCapture(self.target)
        if cap.isOpened():
            return cap
        cap.release()
        return None

    def _reopen(self, lost_at: float, what: str) -> cv2.VideoCapture | None:
        """The capture opened again, or None when the source is closed meanwhile."""
        attempts = 0
        while (left := lost_at + self.cfg.reconnect_s - time.monotonic()) > 0:
            if self._closed.wait(min(RECONNECT_WAITS_S[min(attempts, len(RECONNECT_WAITS_S) - 1)], left)):
                return None
            attempts += 1
            with self._lock:
                cap = None if self._closed.is_set() else self._open()
            if cap is not None:
                get(f"source {self.label}").info(f"reconnected after {time.monotonic() - lost_at:.1f} s ({attempts} attempt(s))")
                return cap
        raise ConnectionError(f"source {self.label}: {what}, and {attempts} attempt(s) to reopen it over "
                              f"{self.cfg.reconnect_s:.0f} s failed; check the camera's power, cable and network "
                              f"(or the URL), or raise source.reconnect_s in the line config")

    def __iter__(self) -> Iterator[SourceItem]:
        n = lost = 0
        while not self._closed.is_set():
            with self._lock:
                ok, frame = (False, None) if self._closed.is_set() else self.cap.read()
            if ok:
                yield SourceItem(f"{self.label}#{n:06d}", frame)
                n += 1
                continue
            if not self.live or self._closed.is_set():
                return
            lost += 1
            lost_at = time.monotonic()
            yield SourceItem(f"{self.label}#lost{lost:03d}", None,
                             f"camera lost: no frame from {self.label} after frame {n}; reconnecting for up to "
                             f"{self.cfg.reconnect_s:.0f} s (source.reconnect_s)", camera_lost=True)
            with self._lock:
                self.cap.release()
            cap = self._reopen(lost_at, "the stream stopped")
            if cap is None:
                return
            self.cap = cap

    def close(self) -> None:
        self._closed.set()
        with self._lock:
            if self.cap is not None:
                self.cap.release()


LIVE_SCHEMES = re.compile(r"^(rtsp|rtsps|http|https)://", re.IGNORECASE)


def open_source(uri: str, cfg: SourceConfig | None = None, stop: threading.Event | None = None) -> Source:
    """The source for ``uri``. ``stop``, when given and set (from another thread or a signal
    handler), ends a wait for a live source that is not there yet."""
    cfg = cfg or SourceConfig()
    if m := re.fullmatch(r"camera(\d+)", uri):
        return CaptureSource(int(m.group(1)), cfg, live=True, stop=stop)
    if LIVE_SCHEMES.match(uri):
        return CaptureSource(uri, cfg, live=True, stop=stop)
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
    if re.fullmatch(r"camera(\d+)", uri) or LIVE_SCHEMES.match(uri):
        return
    for prefix, kind in (("video:", "file"), ("dir:", "folder"), ("replay:", "folder")):
        if uri.startswith(prefix):
            path = Path(uri[len(prefix):])
            if not (path.is_file() if kind == "file" else path.is_dir()):
                raise FileNotFoundError(f"source {uri!r}: no such {kind} {path}")
            if prefix == "replay:":
                read_index(path)
            if prefix == "dir:":
                image_files(path)
            return
    raise ValueError(f"source {uri!r}: expected cameraN, video:FILE, dir:DIR, replay:SEQ or rtsp://...")
