"""The README's quickstart, run as a new user runs it: its bash block, as written, in an empty
folder, with the installed `forecast` first on PATH. Each command must exit 0 (`set -e`)."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def quickstart_block(readme: str) -> str:
    """The first ```bash block under the README's `## Quickstart` heading."""
    section = readme.split("\n## Quickstart\n", 1)[1].split("\n## ", 1)[0]
    match = re.search(r"```bash\n(.*?)\n```", section, re.S)
    assert match, "the README's Quickstart has no ```bash block"
    return match.group(1)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_readme_quickstart_runs_as_written(tmp_path: Path) -> None:
    script = quickstart_block((ROOT / "README.md").read_text(encoding="utf-8"))
    assert "forecast train" in script and "forecast serve" in script and "curl" in script
    # the one liberty taken: another port, so that a busy 8000 on the CI host cannot fail it
    script = script.replace("8000", str(free_port()))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "FORECAST_"))}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    started = time.monotonic()
    # -x echoes each command, so a failure names the command that failed; the trap ends the
    # background server whatever happens
    proc = subprocess.run(
        ["bash", "-x", "-euo", "pipefail", "-c",
         "trap 'kill $(jobs -p) 2>/dev/null || true' EXIT\n" + script],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=1200)
    seconds = time.monotonic() - started
    assert proc.returncode == 0, f"quickstart failed after {seconds:.0f}s:\n{proc.stderr[-4000:]}"
    answers = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    # the history request and the /docs example request, both forecast by the champion
    assert len(answers) == 2, proc.stdout[-2000:]
    for answer in answers:
        assert answer["model"]["name"] == "my-model"
        assert answer["model"]["alias"] == "champion"
        [forecast] = answer["forecasts"]
        assert {len(v) for v in forecast["values"].values()} == {6}
    # the history request asks for the 80% interval: a bound below and above every value
    [forecast] = answers[0]["forecasts"]
    band = forecast["intervals"]["80"]
    for channel, values in forecast["values"].items():
        assert all(lo < v < hi for lo, v, hi in zip(band["lower"][channel], values,
                                                     band["upper"][channel], strict=True))
    assert (tmp_path / "backtest.csv").is_file() and (tmp_path / "backtest_by_step.csv").is_file()
    print(f"quickstart ran in {seconds:.0f}s")
