"""One running job per pipeline and registered model, enforced with an OS file lock.

`flock` is released by the kernel when the process dies, however it dies, so a killed job
never leaves a stale lock behind for the next scheduled run to trip over.
"""

from __future__ import annotations

import fcntl
import os
import re
import socket
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType

from forecast.errors import ConfigError, LockHeld


def lock_path(folder: Path, pipeline: str, model: str) -> Path:
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", model)
    return folder / f"{pipeline}-{safe}.lock"


class JobLock:
    """Context manager: holds the lock or raises LockHeld at once (never waits)."""

    def __init__(self, path: Path, what: str) -> None:
        self.path = path
        self.what = what
        self._fd: int | None = None

    def __enter__(self) -> JobLock:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as err:  # a folder in its place, no permission
            raise ConfigError(f"lock file {self.path} cannot be opened ({err.strerror or err}); "
                              "remove what is in its place or set pipeline.lock_dir to another "
                              "folder") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 512).decode(errors="replace").strip() or "unknown process"
            os.close(fd)
            raise LockHeld(f"{self.what} is already running ({holder}; lock file {self.path}); "
                           "this run exits without doing anything, the next scheduled run will "
                           "try again") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()} on {socket.gethostname()} since "
                     f"{datetime.now(UTC):%Y-%m-%dT%H:%M:%SZ}".encode())
        self._fd = fd
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self._fd is not None:
            os.ftruncate(self._fd, 0)
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None
