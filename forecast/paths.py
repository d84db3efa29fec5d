"""Output folders, made and checked before any work that would be lost if they were not
writable (a training run used to end in an OSError traceback after its last epoch), and the
lock files that serialise short writes to shared files."""

from __future__ import annotations

import contextlib
import fcntl
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from forecast.errors import ConfigError


def writable_dir(path: Path, what: str) -> Path:
    """Create `path` if needed and prove it takes a file; `what` names the setting or flag."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".write-check-"):
            pass
    except OSError as err:
        reason = err.strerror or type(err).__name__
        raise ConfigError(f"{what} {str(path)!r} cannot be written ({reason}); give a folder "
                          "this user can write to") from None
    return path


def writable_file(path: Path, what: str) -> Path:
    """Check, before the work whose result it will hold, that a file can be written at
    `path`: its folder made and writable, the name neither a folder nor too long."""
    writable_dir(path.parent, f"{what}'s folder")
    try:
        limit = os.pathconf(path.parent, "PC_NAME_MAX")
    except (OSError, ValueError):
        limit = 255
    # the file is first written under a longer temporary name beside it
    if len(os.fsencode(path.name)) > limit - _TEMP_NAME_ROOM:
        raise ConfigError(f"{what} {str(path)!r}: the file name is too long (at most "
                          f"{limit - _TEMP_NAME_ROOM} bytes here); shorten it")
    if path.is_dir():
        raise ConfigError(f"{what} {str(path)!r} is a folder; give a file name")
    return path


_TEMP_NAME_ROOM = 32


@contextlib.contextmanager
def exclusive(lock_file: str | Path) -> Iterator[None]:
    """Hold an exclusive lock on `lock_file` (created if missing), waiting for it: for writes
    that take moments. The kernel releases it if the process dies."""
    fd = os.open(lock_file, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock
