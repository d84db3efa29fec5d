"""A run's files in <output_dir>/<name>/ (model/, config.yaml, metrics.json): written to a
staging folder beside them, then moved in under a lock, so that a failed run replaces nothing
and two runs finishing at once never leave a mixed set."""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
from pathlib import Path

from forecast.errors import ConfigError
from forecast.paths import exclusive

MODEL = "model"
FILES = ("config.yaml", "metrics.json")
LOCK = ".publish.lock"


def saved_config(model_dir: Path, config: str | None = None) -> Path:
    """The config a model directory was trained with (config.yaml beside it), or `config` when
    given; a ConfigError naming --config when there is none."""
    path = Path(config) if config else model_dir.parent / FILES[0]
    if not path.is_file():
        raise ConfigError(f"no config at {str(path)!r}; pass --config with the file the model "
                          "was trained with")
    return path


def stage(folder: Path) -> Path:
    """A fresh staging folder in `folder`, named for this process and host, so that a later
    run can remove what a killed one left without touching a live run's."""
    with exclusive(folder / LOCK):
        _recover(folder)
        _sweep(folder)
    return Path(tempfile.mkdtemp(prefix=f".staging-{os.getpid()}@{socket.gethostname()}-",
                                 dir=folder))


def publish(staging: Path, folder: Path) -> None:
    """Move `staging`'s model/ and files over `folder`'s, replacing the previous run's."""
    with exclusive(folder / LOCK):
        _recover(folder)
        old = Path(tempfile.mkdtemp(prefix=".replaced-", dir=folder))
        if (folder / MODEL).exists():
            os.replace(folder / MODEL, old / MODEL)
        os.replace(staging / MODEL, folder / MODEL)
        for name in FILES:
            os.replace(staging / name, folder / name)  # files: atomic each
        shutil.rmtree(old)
        staging.rmdir()


def discard(staging: Path) -> None:
    shutil.rmtree(staging, ignore_errors=True)


def _recover(folder: Path) -> None:
    """A publish killed between its two renames left model/ in a .replaced- folder."""
    for old in folder.glob(".replaced-*"):
        if not (folder / MODEL).exists() and (old / MODEL).is_dir():
            os.replace(old / MODEL, folder / MODEL)
        shutil.rmtree(old, ignore_errors=True)


def _sweep(folder: Path) -> None:
    """Remove staging folders of runs on this host whose process is gone (killed before they
    published); another host's, or a live process's, are left alone."""
    host = socket.gethostname()
    for staging in folder.glob(".staging-*"):
        owner = staging.name.removeprefix(".staging-").rsplit("-", 1)[0]
        pid, _, where = owner.partition("@")
        if where == host and pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(staging, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True
