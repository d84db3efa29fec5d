"""The `forecast` console command: Ctrl-C and SIGTERM are handled from its first instant.

`forecast.cli` imports torch, pandas and MLflow, about 3 s; a signal in that time ended in a
KeyboardInterrupt traceback or exit 143 instead of the documented 130. Only the standard
library is imported here."""

from __future__ import annotations

import json
import signal
import sys
from datetime import UTC, datetime


def main() -> int:
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # as forecast.cli.main does
    try:
        from forecast.cli import main as run
    except KeyboardInterrupt:
        _interrupted(sys.argv[1:])
        return 130
    return run()


def _interrupted(argv: list[str]) -> None:
    """The line forecast.cli ends an interrupted command with, plain or as a JSON record."""
    flag = "--log-format"
    json_logs = f"{flag}=json" in argv or any(
        a == flag and argv[i + 1:i + 2] == ["json"] for i, a in enumerate(argv))
    if not json_logs:
        print("interrupted", file=sys.stderr)
        return
    print(json.dumps({"time": datetime.now(UTC).isoformat(timespec="milliseconds"),
                      "level": "ERROR", "logger": "forecast.cli", "message": "interrupted",
                      "status": "failed", "exit_code": 130}), file=sys.stderr)
