"""The notebooks with MLFLOW_TRACKING_URI pointing at the session's `mlflow server` over
PostgreSQL, as a team member opens them against the shared store: artifacts (the run's plots,
the model the pyfunc loads) travel through the server's proxy."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.test_notebooks import kernel, run_notebooks  # noqa: F401 (kernel is a fixture)
from tests.tracking_server.conftest import Backend


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_notebooks_run_against_the_tracking_server(backend: Backend, tmp_path: Path,
                                                   kernel: str,  # noqa: F811
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    run_notebooks(backend.uri, "notebooks-on-server", tmp_path, kernel, monkeypatch)
