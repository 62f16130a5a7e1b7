"""run_pipeline: run the inspection line (every stage its own process) on a source until it ends."""
from __future__ import annotations

import argparse
import os
import sys

from pipeline.log import LEVEL_ENV, LEVELS, default_level
from tools._cli import run_cli

DEMO_CONFIG = "configs/demo_line.yaml"


def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="run_pipeline", description=__doc__)
    p.add_argument("--config", default=DEMO_CONFIG, help=f"line YAML (default: {DEMO_CONFIG})")
    p.add_argument("--source", required=True, help="camera0, video:FILE, dir:DIR, replay:SEQ or rtsp://...; ${VAR} is read from the "
                   "environment, so a camera's password stays off the command line: "
                   "'rtsp://${CAM_USER}:${CAM_PASS}@host/...' in single quotes")
    p.add_argument("--results", help="write one JSON record per frame here (.jsonl)")
    p.add_argument("--save-overlays", metavar="DIR", help="overlay images for NG frames")
    p.add_argument("--save-masks", action="store_true", help="with --save-overlays: defect masks in camera px")
    p.add_argument("--workers", type=int, help="inference worker processes (overrides the config)")
    p.add_argument("--run-dir", help="folder for ipc endpoints (default: a temporary folder)")
    p.add_argument("--quiet", action="store_true", help="no live status line")
    p.add_argument("--log-level", choices=LEVELS, default=default_level(),
                   help="the stages' messages on stderr from this level on (debug, info, warning, error); "
                        "default %(default)s")
    return p


def main(argv: list[str] | None = None) -> int:
    args = get_parser().parse_args(argv)

    def go() -> int:
        from pipeline.supervisor import run_pipeline

        os.environ[LEVEL_ENV] = args.log_level  # the stages it starts read it (pipeline.log)

        return run_pipeline(args.config, args.source, args.results, args.save_overlays, args.run_dir,
                            not args.quiet, args.workers, args.save_masks)

    return run_cli(go, "run_pipeline")


if __name__ == "__main__":
    sys.exit(main())
