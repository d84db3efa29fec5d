"""The `forecast` console command, as installed (and `python -m forecast`): a signal while it is
still importing."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

COMMAND = str(Path(sys.executable).parent / "forecast")


@pytest.mark.parametrize(("command", "sig", "extra", "expect"), [
    ([COMMAND], signal.SIGTERM, [], "interrupted"),  # was exit 143, not in the exit-code table
    ([COMMAND], signal.SIGINT, [], "interrupted"),  # was a KeyboardInterrupt traceback
    ([COMMAND], signal.SIGTERM, ["--log-format", "json"], "json"),
    ([sys.executable, "-m", "forecast"], signal.SIGTERM, [], "interrupted"),
])
def test_a_signal_during_start_up_exits_130_in_one_line(
        tmp_path: Path, command: list[str], sig: signal.Signals, extra: list[str],
        expect: str) -> None:
    proc = subprocess.Popen(
        [*command, "tune", "--config", "missing.yaml", *extra],
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        # SIGINT as a terminal delivers it: not ignored, as in a shell's background job
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    time.sleep(0.3)  # forecast.cli is still importing torch and MLflow (about 3 s)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    if expect == "json":
        [line] = err.splitlines()
        record = json.loads(line)
        assert (record["level"], record["message"], record["exit_code"]) == (
            "ERROR", "interrupted", 130)
    else:
        assert err == "interrupted\n"


def test_mlflow_http_retries_are_bounded_unless_the_user_set_them() -> None:
    from forecast.entry import bound_http_retries

    environ = {"MLFLOW_HTTP_REQUEST_TIMEOUT": "300"}  # a slow link's own setting
    bound_http_retries(environ)
    assert environ == {"MLFLOW_HTTP_REQUEST_TIMEOUT": "300",
                       "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "3",
                       "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1"}
