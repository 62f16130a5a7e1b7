"""serve_rtsp: serve a recorded sequence (or a folder of images) as an RTSP camera, to commission a
line's network path and run it end to end without the camera: `run_pipeline --source URL`."""
from __future__ import annotations

import argparse
import time

from tools._cli import run_cli


def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="serve_rtsp", description=__doc__)
    p.add_argument("frames", help="recorded sequence folder (record_sequence, simulate_line) or a folder of images")
    p.add_argument("--port", type=int, default=8554, help="TCP port to serve on; default %(default)s")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: every interface)")
    p.add_argument("--path", default="line", help="the stream's path in the URL")
    p.add_argument("--fps", type=float, help="frame rate (default: the sequence's recorded rate, else 10)")
    p.add_argument("--codec", choices=["jpeg", "h264"], default="jpeg", help="h264 needs PyAV (pip install av)")
    p.add_argument("--seconds", type=float, help="stop after this long (default: until Ctrl-C)")
    return p


def load_frames(folder: str) -> tuple[list, float | None]:
    """The frames in order, and the recorded rate when the folder is a recorded sequence, read by the
    line's own replay and dir sources. Files that do not decode are left out, as a camera would
    never send them."""
    from pathlib import Path

    from pipeline.sequence import INDEX
    from pipeline.sources import DirSource, ReplaySource

    root = Path(folder)
    items = list(ReplaySource(root) if (root / INDEX).is_file() else DirSource(root))
    frames = [i.frame for i in items if i.frame is not None]
    if not frames:
        raise ValueError(f"{folder}: no decodable frames to serve")
    times = [i.recorded_ns for i in items if i.recorded_ns is not None]
    span_s = (times[-1] - times[0]) / 1e9 if len(times) > 1 else 0.0
    return frames, (len(times) - 1) / span_s if span_s > 0 else None


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
        print(f"serve_rtsp: sent {server.sent} frames to {server.plays} client(s)")
        return 0

    return run_cli(go, "serve_rtsp")


if __name__ == "__main__":
    raise SystemExit(main())
