"""Logging for the line's processes: one logger per stage or sink, whose name leads each of its
lines on stderr ("stitch: resumed from frame 12"), at the level ``--log-level`` sets."""
from __future__ import annotations

import logging
import os
import sys

LEVELS = ("debug", "info", "warning", "error")
LEVEL_ENV = "TILEGUARD_LOG_LEVEL"  # how run_pipeline hands its --log-level to the stages it starts
FORMAT = "%(name)s: %(message)s"


class _Stderr(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is when a line is logged, not when the handler was made."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property
    def stream(self):  # type: ignore[override]
        return sys.stderr

    @stream.setter
    def stream(self, _value) -> None:
        pass


def default_level() -> str:
    level = os.environ.get(LEVEL_ENV, "info").lower()
    return level if level in LEVELS else "info"


def setup(level: str | None = None) -> None:
    """Send every logger's lines to stderr as ``NAME: message`` at ``level`` (default: the
    environment's ``TILEGUARD_LOG_LEVEL``, else info). Safe to call more than once."""
    level = (level or default_level()).lower()
    if level not in LEVELS:
        raise ValueError(f"--log-level {level!r}; valid: {list(LEVELS)}")
    root = logging.getLogger()
    if not any(isinstance(h, _Stderr) for h in root.handlers):
        handler = _Stderr()
        handler.setFormatter(logging.Formatter(FORMAT))
        root.addHandler(handler)
    root.setLevel(level.upper())


def get(name: str) -> logging.Logger:
    """The logger of a stage or sink; ``name`` leads its lines (``stitch``, ``http sink``). Its
    lines reach stderr even where nothing called :func:`setup` (a sink used in-process)."""
    if not any(isinstance(h, _Stderr) for h in logging.getLogger().handlers):
        setup()
    return logging.getLogger(name)
