"""What every stage process shares: arguments, config loading, endpoints, clean shutdown.

Stopping. A stage run by hand stops on SIGTERM. A stage started by run_pipeline (the supervisor
sets ``SUPERVISOR_ENV`` to its own pid) stops when the supervisor asks (``STOP_SIGNAL``), and
ignores SIGTERM and SIGINT while the supervisor lives: a service manager that signals the whole
process group (systemd's default) reaches the supervisor too, which drains the line and stops the
stages in order. When the supervisor dies, even by SIGKILL, the kernel sends the stage SIGTERM
(``PR_SET_PDEATHSIG``); the stage then stops, and if it cannot within ``ORPHAN_GRACE_S`` its own
alarm ends it: no stage outlives run_pipeline."""
from __future__ import annotations

import argparse
import ctypes
import json
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path

import zmq

from pipeline.log import LEVEL_ENV, LEVELS, default_level, get
from pipeline.log import setup as setup_logging
from pipeline.config import LineConfig, load_config
from pipeline.transport import endpoint

POLL_MS = 100
USER_ERROR = 2  # a stage's exit code for a problem a user must fix (said in one line)
SUPERVISOR_ENV = "TILEGUARD_SUPERVISOR_PID"
STOP_SIGNAL = signal.SIGUSR1
ORPHAN_GRACE_S = 5
_PR_SET_PDEATHSIG = 1


def _die_with_parent(sig: int) -> None:
    """Ask the kernel for ``sig`` when the parent process ends (Linux; elsewhere a no-op)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0)
    except (OSError, AttributeError):  # not Linux: the supervisor's own cleanup stops the stages
        pass


def stage_parser(name: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=f"python -m pipeline.stages.{name}")
    p.add_argument("--config", required=True, help="line YAML (the same file on every host)")
    p.add_argument("--run-dir", required=True, help="folder for ipc:// endpoints of this run")
    p.add_argument("--log-level", choices=LEVELS, default=default_level(),
                   help="the stage's messages on stderr from this level on; default %(default)s "
                        f"(${LEVEL_ENV}, which run_pipeline --log-level sets)")
    return p


class Stage:
    """Holds the config, a zmq context, endpoint lookup and a stop flag set by SIGTERM/SIGINT."""

    def __init__(self, config: str | Path | LineConfig, run_dir: str | Path, name: str = "stage") -> None:
        self.name = name
        self.supervisor = int(os.environ.get(SUPERVISOR_ENV) or 0) or None
        self.stopping = False
        self.on_stop: list[Callable[[], None]] = []  # e.g. the source's: stop waiting for a camera
        if self.supervisor is not None:
            _die_with_parent(signal.SIGTERM)
            if os.getppid() != self.supervisor:  # it died before the request above took effect
                sys.exit(f"{name}: run_pipeline (pid {self.supervisor}) is gone; not starting")
            signal.signal(STOP_SIGNAL, self._stop)
            signal.signal(signal.SIGTERM, self._term)
        else:
            signal.signal(signal.SIGTERM, self._stop)
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C goes to the supervisor, which stops stages in order
        self.cfg = config if isinstance(config, LineConfig) else load_config(config)
        self.run_dir = Path(run_dir)
        self.ctx = zmq.Context()

    def _stop(self, *_: object) -> None:
        self.stopping = True
        for fn in self.on_stop:
            fn()

    def _term(self, *_: object) -> None:
        if os.getppid() == self.supervisor:  # the supervisor got it too and stops the stages in order
            return
        signal.alarm(ORPHAN_GRACE_S)  # SIGALRM's default action ends the process if stopping hangs
        self._stop()

    def ep(self, name: str) -> str:
        return endpoint(getattr(self.cfg.endpoints, name), self.run_dir)

    def close(self) -> None:
        self.ctx.destroy(linger=2000)


def run_stage(parser: argparse.ArgumentParser, argv: list[str] | None,
              loop: Callable[[Stage, argparse.Namespace], int]) -> int:
    """Parse a stage's arguments, build its Stage, run its loop and always release the sockets."""
    from engines.artifact import ArtifactError
    from engines.backends.base import BackendUnavailable
    from pipeline.config import ConfigError

    args = parser.parse_args(argv)
    setup_logging(args.log_level)
    name = parser.prog.rsplit(".", 1)[-1]
    stage = None
    try:
        stage = Stage(args.config, args.run_dir, name)
        return loop(stage, args)
    except (ArtifactError, ConfigError, BackendUnavailable, FileNotFoundError, PermissionError) as exc:
        # what a user can fix (a model file gone bad, a path): one line, not a traceback per restart
        get(name).error(f"error: {exc}")
        return USER_ERROR
    finally:
        if stage is not None:
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


class HoldingNote:
    """The frames a stage has taken and not yet passed on, in ``RUN_DIR/holding/STAGE.json``,
    replaced atomically. When the stage crashes, the supervisor hands this list to the stitch
    stage, which closes exactly those frames (unless their result still comes), not every frame
    in flight."""

    def __init__(self, run_dir: Path, stage: str) -> None:
        self.path = holding_path(run_dir, stage)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = self.path.with_suffix(".tmp")
        self.held: list[int] = []
        self.write([])

    def write(self, frame_ids: list[int]) -> None:
        self.held = list(frame_ids)
        self.tmp.write_text(json.dumps(self.held))
        os.replace(self.tmp, self.path)


def holding_path(run_dir: str | Path, stage: str) -> Path:
    return Path(run_dir) / "holding" / f"{stage}.json"


def read_holding(run_dir: str | Path, stage: str) -> list[int]:
    """The frames ``stage`` noted as held; [] when there is no readable note."""
    try:
        held = json.loads(holding_path(run_dir, stage).read_text())
        return [int(f) for f in held]
    except (OSError, ValueError, TypeError):
        return []
