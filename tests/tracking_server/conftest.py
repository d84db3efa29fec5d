"""One throwaway PostgreSQL cluster and one `mlflow server` on it for every test in this
folder: starting them and MLflow's schema migrations take most of a minute on 2 cores, once.

Each test file uses its own experiments and registered-model names, so tests do not see each
other's runs. A test that kills the server or stops PostgreSQL starts it again on the same
port and data."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.servers import MlflowServer, Postgres


@dataclass
class Backend:
    """The session's PostgreSQL, its server, and the folder the server keeps artifacts in."""

    postgres: Postgres
    server: MlflowServer
    artifacts: Path

    @property
    def uri(self) -> str:
        return self.server.uri


@pytest.fixture(scope="session")
def backend(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Backend]:
    root = tmp_path_factory.mktemp("mlflow-postgresql")
    pg = Postgres()
    try:
        server = MlflowServer(pg.uri, str(root / "artifacts"), root / "server", workers=1)
    except BaseException:
        pg.remove()
        raise
    try:
        yield Backend(pg, server, root / "artifacts")
    finally:
        server.stop(signal.SIGKILL)  # nothing of it is needed after the session
        pg.remove()
