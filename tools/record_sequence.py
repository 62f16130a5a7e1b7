"""record_sequence: record frames with their capture timestamps, for replay and regression tests."""
from __future__ import annotations

import argparse
import sys
import time

from tools._cli import run_cli


def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="record_sequence", description=__doc__)
    p.add_argument("--source", required=True, help="camera0, video:FILE, dir:DIR, rtsp://...; ${VAR} is read from "
                   "the environment (rtsp://${CAM_USER}:${CAM_PASS}@host/...)")
    p.add_argument("--config", help="line YAML whose source section to use (camera size, fps and exposure, stream "
                                    "options, reconnect_s), so the frames are as the line will see them")
    p.add_argument("--out", required=True, help="sequence folder to write")
    p.add_argument("--frames", type=int, default=0, help="stop after N frames (0: until the source ends or Ctrl-C)")
    p.add_argument("--seconds", type=float, default=0, help="stop after this many seconds")
    return p


def main(argv: list[str] | None = None) -> int:
    args = get_parser().parse_args(argv)

    def go() -> None:
        from tqdm import tqdm

        from pipeline.sequence import SequenceWriter
        from pipeline.sources import expand_env, open_source

        from pipeline.config import load_config

        source = open_source(expand_env(args.source), load_config(args.config).source if args.config else None)
        writer = SequenceWriter(args.out)
        start = time.monotonic()
        skipped = 0
        try:
            for item in tqdm(source, desc="record", unit="frame", total=args.frames or None):
                if item.frame is None:
                    skipped += 1
                    print(f"record_sequence: skipped {item.name}: {item.reason}", file=sys.stderr)
                else:
                    writer.add(item.frame, time.monotonic_ns())
                if (args.frames and writer.count >= args.frames) or (args.seconds and time.monotonic() - start >= args.seconds):
                    break
        except KeyboardInterrupt:
            pass
        finally:
            writer.close()
            source.close()
        print(f"wrote {writer.count} frames to {args.out}" + (f" ({skipped} unreadable skipped)" if skipped else ""))

    return run_cli(go, "record_sequence")


if __name__ == "__main__":
    sys.exit(main())
