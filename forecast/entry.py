"""The `forecast` console command: Ctrl-C and SIGTERM are handled from its first instant.

`forecast.cli` imports torch, pandas and MLflow, about 3 s; a signal in that time ended in a
KeyboardInterrupt traceback or exit 143 instead of the documented 130. Only the standard
library is imported here."""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import MutableMapping

# MLflow retries a failed request to a tracking server 7 times with backoff factor 2, and waits
# 120 s for each answer: about four minutes per request, so a job whose server died hung for
# many minutes on every call it made while failing (log, tag, end the run). These give up
# after about 10 s on a refused connection (3 retries sleeping 0, 2, 4 s plus jitter) and
# 30 s on a silent server; a variable the user set is left as it is.
HTTP_RETRY_DEFAULTS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "3",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "30",
}


def main() -> int:
    # MLflow's usage telemetry sets and removes an environment variable from a thread; a
    # request reading the environment meanwhile failed with KeyError
    # '_MLFLOW_TELEMETRY_SESSION_ID' (1 of 16 jobs at once against a server). It also calls
    # out to the internet. Off unless the user asks for it.
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    bound_http_retries(os.environ)
    # A signal while importing is noted and acted on once the imports are done: raised inside
    # them, a library's bare `except:` could swallow it and the command would run on
    received: list[int] = []
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    for sig, handler in previous.items():
        if handler is not signal.SIG_IGN:  # a background job's ignored Ctrl-C stays ignored
            signal.signal(sig, lambda signum, frame: received.append(signum))
    from forecast.cli import main as run

    signal.signal(signal.SIGINT, previous[signal.SIGINT])
    if previous[signal.SIGTERM] is not signal.SIG_IGN:
        signal.signal(signal.SIGTERM, signal.default_int_handler)  # as forecast.cli.main does
    if received:
        _interrupted(sys.argv[1:])
        return 130
    return run()


def bound_http_retries(environ: MutableMapping[str, str]) -> None:
    """Set HTTP_RETRY_DEFAULTS in `environ` where the user has not set them."""
    for name, value in HTTP_RETRY_DEFAULTS.items():
        environ.setdefault(name, value)


def _interrupted(argv: list[str]) -> None:
    """The line forecast.cli ends an interrupted command with, plain or as a JSON record."""
    from forecast.logs import failure_line, json_requested  # standard library only

    print(failure_line("interrupted", 130, json_requested(argv)), file=sys.stderr)
