"""Shared CLI plumbing: turn known user errors into one clear line and exit code 2."""
from __future__ import annotations

import sys
from typing import Callable

from engines.artifact import ArtifactError
from engines.data import DataError

# ConfigError is a ValueError; ConnectionError: a camera or stream that could not be (re)opened
USER_ERRORS: tuple[type[BaseException], ...] = (DataError, ArtifactError, FileNotFoundError, ValueError, ConnectionError)


def run_cli(fn: Callable[[], int | None], prog: str) -> int:
    try:
        return int(fn() or 0)
    except USER_ERRORS as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
