"""benchmarks/tracking_server.py in its small mode against the session's `mlflow server` on
PostgreSQL: two jobs training the same registered model at once both exit 0 (they also log the
same dataset at once, which PostgreSQL's unique key once refused), both versions record their
gate decision and the champion is the better; the server's and PostgreSQL's peak memory are
sampled. The phase of jobs for different models runs the same code, so it is left out here."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.tracking_server.conftest import Backend

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_concurrent_jobs_leave_the_best_version_champion(backend: Backend,
                                                         tmp_path: Path) -> None:
    out = tmp_path / "result.json"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "tracking_server.py"), "--same", "2",
         "--models", "0", "--tracking-uri", backend.uri,
         "--watch", f"server={backend.server.proc.pid}",
         "--watch", f"postgres={backend.postgres.pid()}", "--results", str(out)],
        capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    saved = json.loads(out.read_text())
    assert saved["benchmark"] == "tracking_server" and saved["results"] == result
    assert result["same_model_exit_codes"] == [0, 0]
    assert result["gate"]["decided"] == result["gate"]["versions"] == 2
    assert result["gate"]["champion_is_best"]
    assert result["many_model_exit_codes"] == [] and result["many_models_registered"] == 0
    assert result["peak_rss_mb"]["server"] > 0 and result["peak_rss_mb"]["postgres"] > 0
