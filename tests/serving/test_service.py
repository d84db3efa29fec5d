"""Health, readiness, model info, auth, metrics and the OpenAPI docs."""

from __future__ import annotations

import time
from typing import Any

import pytest
from fastapi.testclient import TestClient

from tests.serving.test_forecast_api import post, series


def test_health_and_readiness(client: TestClient) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200
    for path in ("/healthz", "/readyz"):  # probes that send HEAD
        head = client.head(path)
        assert (head.status_code, head.content) == (200, b"")
    assert ready.json()["detail"] == "serving model vlocal"


def test_not_ready_until_a_model_loads(make_client: Any, tmp_path: Any) -> None:
    broken = make_client(wait=False, model_uri=str(tmp_path / "nowhere"))
    assert broken.get("/healthz").status_code == 200
    assert broken.head("/readyz").status_code == 503
    deadline = time.time() + 20
    while time.time() < deadline:
        ready = broken.get("/readyz")
        assert ready.status_code == 503
        assert ready.json()["ready"] is False
        if "not a model directory" in ready.json()["detail"]:
            break
        time.sleep(0.05)
    assert "not a model directory" in ready.json()["detail"]
    reply = post(broken, {"series": [series()]})
    assert reply.status_code == 503
    assert "model not loaded yet" in reply.json()["detail"]


def test_model_info(client: TestClient, forecaster: Any) -> None:
    info = client.get("/v1/model").json()
    assert info["lookback"] == 48 and info["horizon"] == 12 and info["min_history"] == 12
    assert info["channels"] == [f"load_{i}" for i in range(5)]
    assert info["frequency"] == "h"
    assert info["metrics"]["test_mse"] == forecaster.meta.metrics["test_mse"]


def test_bearer_token_guards_v1_but_not_probes(make_client: Any) -> None:
    secured = make_client(api_token="s3cret")
    body = {"series": [series()]}
    assert post(secured, body).status_code == 401
    assert secured.post("/v1/forecast", json=body,
                        headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert secured.get("/v1/model").status_code == 401
    ok = secured.post("/v1/forecast", json=body, headers={"Authorization": "Bearer s3cret"})
    assert ok.status_code == 200
    assert secured.get("/healthz").status_code == 200
    assert secured.get("/readyz").status_code == 200
    lower = secured.post("/v1/forecast", json=body, headers={"Authorization": "bearer s3cret"})
    assert lower.status_code == 200  # the scheme is case-insensitive (RFC 7235)
    for scheme in ("Basic s3cret", "Bearer s3cret2", "Bearer", "s3cret"):
        assert secured.get("/v1/model", headers={"Authorization": scheme}).status_code == 401


def test_no_token_is_refused_before_the_body_is_read(make_client: Any) -> None:
    secured = make_client(api_token="s3cret")
    for body, media in ((b"{not json", "application/json"), (b"x" * 10_000, "text/plain")):
        reply = secured.post("/v1/forecast", content=body, headers={"content-type": media})
        assert reply.status_code == 401, reply.text
        assert reply.json() == {"detail": "missing or invalid bearer token"}
        assert reply.headers["www-authenticate"] == "Bearer"
    # behind uvicorn --root-path or a mount the raw path carries a prefix the router removes
    behind = TestClient(secured.app, root_path="/api")
    assert behind.get("/api/v1/model").status_code == 401
    assert behind.get("/api/v1/model", headers={"Authorization": "Bearer s3cret"}).status_code \
        == 200
    # of repeated Authorization headers the first counts, as Starlette reads headers
    for first, second, code in (("s3cret", "bad", 200), ("bad", "s3cret", 401)):
        reply = secured.get("/v1/model", headers=[("Authorization", f"Bearer {first}"),
                                                  ("Authorization", f"Bearer {second}")])
        assert reply.status_code == code
    schema = secured.get("/openapi.json").json()
    assert schema["components"]["securitySchemes"] == {"bearer": {"type": "http",
                                                                  "scheme": "bearer"}}
    assert schema["paths"]["/v1/forecast"]["post"]["security"] == [{"bearer": []}]
    assert "security" not in schema["paths"]["/healthz"]["get"]
    assert set(schema["paths"]["/healthz"]) == {"get"}  # HEAD is served, not documented
    operation_ids = [op["operationId"] for path in schema["paths"].values()
                     for op in path.values()]
    assert len(operation_ids) == len(set(operation_ids))


def test_metrics_count_requests_by_status(client: TestClient) -> None:
    post(client, {"series": [series()]})
    post(client, {"series": [series()], "horizon": 99})
    text = client.get("/metrics").text
    assert 'forecast_http_requests_total{path="/v1/forecast",status="200"} 1.0' in text
    assert 'forecast_http_requests_total{path="/v1/forecast",status="422"} 1.0' in text
    assert 'forecast_http_request_seconds_bucket{le="0.005",path="/v1/forecast"}' in text
    assert 'forecast_model_version_info{name="model",version="local"} 1.0' in text
    assert "forecast_series_total 1.0" in text


def test_docs_example_request_works(client: TestClient) -> None:
    assert client.get("/docs").status_code == 200
    spec = client.get("/openapi.json").json()
    example = spec["paths"]["/v1/forecast"]["post"]["requestBody"]["content"][
        "application/json"]["example"]
    reply = post(client, example)
    assert reply.status_code == 200, reply.text
    [forecast] = reply.json()["forecasts"]
    assert len(forecast["timestamps"]) == 6
    # the example asks for the 80% interval, which the served model's calibration gives
    assert example["levels"] == [80] and set(forecast["intervals"]) == {"80"}


def test_empty_api_token_is_refused_not_treated_as_no_auth(monkeypatch: Any) -> None:
    # FORECAST_API_TOKEN="" would otherwise match a request without an Authorization header
    from pydantic import ValidationError

    from serving.settings import Settings

    for blank in ("", "  "):
        monkeypatch.setenv("FORECAST_API_TOKEN", blank)
        with pytest.raises(ValidationError, match="FORECAST_API_TOKEN is set but empty"):
            Settings()
    monkeypatch.delenv("FORECAST_API_TOKEN")
    assert Settings().api_token is None


def test_torch_threads_are_bounded(monkeypatch: Any) -> None:
    # 100000 passed, and torch's thread start-up failed with tracebacks: no model loaded
    from pydantic import ValidationError

    from serving.settings import Settings

    monkeypatch.setenv("FORECAST_TORCH_THREADS", "100000")
    with pytest.raises(ValidationError, match="less than or equal to 256"):
        Settings()
