"""schemathesis generates requests from the OpenAPI spec for every operation: no response may
be a 5xx."""

from __future__ import annotations

from pathlib import Path

import hypothesis
import schemathesis
from fastapi.testclient import TestClient

from serving.app import create_app
from serving.settings import Settings
from tests.serving.conftest import wait_ready


def test_no_server_errors_on_generated_requests(model_dir: Path) -> None:
    app = create_app(Settings(model_uri=str(model_dir)))
    with TestClient(app) as client:
        wait_ready(client)
        schema = schemathesis.openapi.from_asgi("/openapi.json", app)
        seen: dict[str, set[int]] = {}
        for result in schema.get_all_operations():
            operation = result.ok()

            @hypothesis.given(case=operation.as_strategy())
            @hypothesis.settings(max_examples=50, deadline=None, database=None,
                                 suppress_health_check=list(hypothesis.HealthCheck))
            def call(case: schemathesis.Case) -> None:
                response = case.call()
                seen.setdefault(case.path, set()).add(response.status_code)
                assert response.status_code < 500, (
                    f"{case.method} {case.path} -> {response.status_code}: {response.text[:300]}")

            call()
    assert "/v1/forecast" in seen
    assert 422 in seen["/v1/forecast"]  # the generator did reach the validation paths
