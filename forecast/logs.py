"""Log set-up for people (plain lines) and for log collectors (one JSON object per line).

Every record carries the MLflow run id when a run is active, so that a scheduler's log line
leads straight to the run in the UI.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from datetime import UTC, datetime

# the loggers mlflow.utils.logging_utils gives a stream handler of its own
MLFLOW_LOGGERS = ("mlflow", "sqlalchemy.engine", "alembic", "huey")
PLAIN = "%(asctime)s %(levelname)s %(name)s [run %(run_id)s]: %(message)s"
# Attributes every LogRecord has; anything else came in through `extra=` and is kept.
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}


def json_requested(argv: list[str]) -> bool:
    """Whether a command line asks for JSON logs, before (or without) argparse reading it."""
    flag = "--log-format"
    return f"{flag}=json" in argv or any(
        a == flag and argv[i + 1:i + 2] == ["json"] for i, a in enumerate(argv))


def failure_line(message: str, code: int, json_format: bool) -> str:
    """The line a command that failed before logging was set up ends with: the message, or
    the JSON record a log collector reads (status failed, the exit code)."""
    if not json_format:
        return message
    record = logging.LogRecord("forecast.cli", logging.ERROR, __file__, 0, message, None, None)
    record.status, record.exit_code, record.run_id = "failed", code, "-"
    return JsonFormatter().format(record)


class RunIdFilter(logging.Filter):
    """Sets record.run_id: an explicit `extra={"run_id": ...}`, else the active MLflow run."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not getattr(record, "run_id", None):
            import mlflow  # here: forecast.entry formats with this module before mlflow loads

            run = mlflow.active_run()
            record.run_id = run.info.run_id if run is not None else "-"
        return True


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        entry.update({k: v for k, v in vars(record).items() if k not in _STANDARD})
        if entry.get("run_id") == "-":
            entry["run_id"] = None
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def setup_logging(json_format: bool = False, quiet: bool = False) -> None:
    """Configure the root logger once per process (CLI entry points call this)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(RunIdFilter())
    handler.setFormatter(JsonFormatter() if json_format else logging.Formatter(PLAIN))
    handler.set_name("forecast")
    root = logging.getLogger()
    # Replace our own handler from an earlier call (tests call main() many times); keep others.
    root.handlers[:] = [h for h in root.handlers if h.get_name() != "forecast"] + [handler]
    root.setLevel(logging.WARNING if quiet else logging.INFO)
    if json_format:
        # One stream in one format: Python warnings come through our handler, and the loggers
        # MLflow gives handlers of its own write our JSON (their levels and filters stay)
        logging.captureWarnings(True)
        for name in MLFLOW_LOGGERS:
            for own in logging.getLogger(name).handlers:
                own.setFormatter(handler.formatter)
                if not any(isinstance(f, RunIdFilter) for f in own.filters):
                    own.addFilter(RunIdFilter())
    if json_format or not sys.stderr.isatty():
        # MLflow draws artifact download bars on stderr (it reads this when it downloads): in a
        # job's log file or a JSON stream they are noise
        os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = "false"
