"""benchmarks/tracking_server.py in its small mode: jobs training the same registered model at
once against `mlflow server` on PostgreSQL all exit 0, every version records its gate
decision, and the champion is the best of them; jobs for other models all register."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_concurrent_jobs_leave_the_best_version_champion(tmp_path: Path) -> None:
    out = tmp_path / "result.json"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "tracking_server.py"), "--same", "3",
         "--models", "2", "--workers", "2", "--output", str(out)],
        capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result == json.loads(out.read_text())
    assert result["same_model_exit_codes"] == [0, 0, 0]
    assert result["gate"]["decided"] == result["gate"]["versions"] == 3
    assert result["gate"]["champion_is_best"]
    assert result["many_models_registered"] == 2
    assert result["peak_rss_mb"]["server"] > 0 and result["peak_rss_mb"]["postgres"] > 0
    assert {"commit", "machine", "date"} <= result.keys()
