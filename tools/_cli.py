"""Shared CLI plumbing: turn known user errors into one clear line and exit code 2."""
from __future__ import annotations

import errno
import sys
from typing import Callable

from engines.artifact import ArtifactError
from engines.data import DataError

# ConfigError is a ValueError; ConnectionError: a camera or stream that could not be (re)opened
USER_ERRORS: tuple[type[BaseException], ...] = (DataError, ArtifactError, FileNotFoundError, ValueError, ConnectionError)
# A file or folder the user pointed at that cannot be written or read: said in one line, not a traceback.
USER_OS_ERRORS = {errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.ENOTDIR,
                  errno.EISDIR, errno.ENOENT, errno.EEXIST}
FIXES = {errno.ENOSPC: "free space on that disk or choose another folder", errno.EDQUOT: "free space or raise the quota",
         errno.EROFS: "choose a folder on a writable disk", errno.EFBIG: "choose another folder or raise the file size limit"}


def run_cli(fn: Callable[[], int | None], prog: str) -> int:
    try:
        return int(fn() or 0)
    except USER_ERRORS as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        if exc.errno not in USER_OS_ERRORS:
            raise
        path = exc.filename or "a file"
        fix = FIXES.get(exc.errno, "check the path and its permissions")
        print(f"{prog}: error: {path}: {exc.strerror or exc}; {fix}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130


def default_of(owner, name: str):
    """The default a library gives ``name``: a dataclass field's, or a function's keyword's, so
    that a tool's option and the library it calls never disagree."""
    import dataclasses
    import inspect

    if dataclasses.is_dataclass(owner):
        f = {x.name: x for x in dataclasses.fields(owner)}[name]
        return f.default_factory() if f.default is dataclasses.MISSING else f.default
    return inspect.signature(owner).parameters[name].default
