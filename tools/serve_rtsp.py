"""serve_rtsp: serve a recorded sequence (or a folder of images) as an RTSP camera, to commission a
line's network path and run it end to end without the camera: `run_pipeline --source URL`."""
from __future__ import annotations

import argparse
import time

from tools._cli import run_cli


def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="serve_rtsp", description=__doc__)
    p.add_argument("frames", help="recorded sequence folder (record_sequence, simulate_line) or a folder of images")
    p.add_argument("--port", type=int, default=8554)
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: every interface)")
    p.add_argument("--path", default="line", help="the stream's path in the URL")
    p.add_argument("--fps", type=float, help="frame rate (default: the sequence's recorded rate, else 10)")
    p.add_argument("--codec", choices=["jpeg", "h264"], default="jpeg", help="h264 needs PyAV (pip install av)")
    p.add_argument("--seconds", type=float, help="stop after this long (default: until Ctrl-C)")
    return p


def load_frames(folder: str) -> tuple[list, float | None]:
    """The frames in order, and the recorded rate when the folder is a recorded sequence. Files that
    do not decode are left out, as a camera would never send them."""
    from pathlib import Path

    import cv2

    from engines.data import IMAGE_SUFFIXES
    from pipeline.sequence import INDEX, read_index

    root = Path(folder)
    if not root.is_dir():
        raise FileNotFoundError(f"{folder}: no such folder")
    if (root / INDEX).is_file():
        entries = read_index(root)
        files = [root / e["file"] for e in entries]
        span_s = (entries[-1]["capture_ns"] - entries[0]["capture_ns"]) / 1e9 if len(entries) > 1 else 0.0
        fps = (len(entries) - 1) / span_s if span_s > 0 else None
    else:
        files, fps = sorted(f for f in root.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES), None
    frames = [f for f in (cv2.imread(str(p)) for p in files) if f is not None]
    if not frames:
        raise ValueError(f"{folder}: no decodable frames to serve")
    return frames, fps


def main(argv: list[str] | None = None) -> int:
    args = get_parser().parse_args(argv)

    def go() -> int:
        from pipeline.rtsp_server import RtspServer

        frames, recorded_fps = load_frames(args.frames)
        fps = args.fps or recorded_fps or 10.0
        server = RtspServer(frames, args.port, fps=fps, codec=args.codec, host=args.host, path=args.path)
        print(f"serve_rtsp: {len(frames)} frames at {fps:.1f} frames/s, {args.codec}, looping, at {server.url}", flush=True)
        try:
            end = time.monotonic() + args.seconds if args.seconds else float("inf")
            while time.monotonic() < end:
                time.sleep(0.1)
        finally:
            server.stop()
        print(f"serve_rtsp: sent {server.sent} frames to {server.sessions} session(s)")
        return 0

    return run_cli(go, "serve_rtsp")


if __name__ == "__main__":
    raise SystemExit(main())
