"""Output folders, made and checked before any work that would be lost if they were not
writable (a training run used to end in an OSError traceback after its last epoch)."""

from __future__ import annotations

import tempfile
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
