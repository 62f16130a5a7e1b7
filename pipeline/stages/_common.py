"""What every stage process shares: arguments, config loading, endpoints, clean shutdown."""
from __future__ import annotations

import argparse
import os
import signal
from collections.abc import Callable
from pathlib import Path

import zmq

from pipeline.config import LineConfig, load_config
from pipeline.transport import endpoint

POLL_MS = 100


def stage_parser(name: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=f"python -m pipeline.stages.{name}")
    p.add_argument("--config", required=True, help="line YAML (the same file on every host)")
    p.add_argument("--run-dir", required=True, help="folder for ipc:// endpoints of this run")
    return p


class Stage:
    """Holds the config, a zmq context, endpoint lookup and a stop flag set by SIGTERM/SIGINT."""

    def __init__(self, config: str | Path | LineConfig, run_dir: str | Path) -> None:
        self.cfg = config if isinstance(config, LineConfig) else load_config(config)
        self.run_dir = Path(run_dir)
        self.ctx = zmq.Context()
        self.stopping = False
        signal.signal(signal.SIGTERM, self._stop)
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C goes to the supervisor, which stops stages in order

    def _stop(self, *_: object) -> None:
        self.stopping = True

    def ep(self, name: str) -> str:
        return endpoint(getattr(self.cfg.endpoints, name), self.run_dir)

    def close(self) -> None:
        self.ctx.destroy(linger=2000)


def run_stage(parser: argparse.ArgumentParser, argv: list[str] | None,
              loop: Callable[[Stage, argparse.Namespace], int]) -> int:
    """Parse a stage's arguments, build its Stage, run its loop and always release the sockets."""
    args = parser.parse_args(argv)
    stage = Stage(args.config, args.run_dir)
    try:
        return loop(stage, args)
    finally:
        stage.close()


def note_progress(path: Path, frame_id: int) -> None:
    """The last frame id a stage has finished with, for a restarted stage (``--resume``); replaced
    atomically, so a crash leaves the old note or the new one, never half of one."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(str(frame_id))
    os.replace(tmp, path)


def read_progress(path: Path) -> int:
    """The frame id noted by ``note_progress``; -1 when there is none."""
    text = path.read_text().strip() if path.is_file() else ""
    return int(text) if text else -1
