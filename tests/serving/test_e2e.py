"""End to end: `forecast serve` as a real uvicorn process on 127.0.0.1, a real MLflow
registry, real HTTP. Includes the hot swap under a stream of requests and a broken version."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from forecast.registry import CHAMPION, load_version_forecaster
from tests.serving.conftest import MODEL_NAME, Registry
from tests.serving.test_forecast_api import CHANNELS, FRAME, series

pytestmark = pytest.mark.slow


def start_server(registry: Registry, port: int, **env_extra: str) -> subprocess.Popen:
    # The store is named by --tracking-uri alone, from a folder that does not hold it, so that
    # nothing may fall back to $MLFLOW_TRACKING_URI or ./mlflow.db.
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"} | env_extra
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    elsewhere = registry.root / "server-cwd"
    elsewhere.mkdir(exist_ok=True)
    return subprocess.Popen(
        [sys.executable, "-m", "forecast.cli", "-q", "serve", "--model",
         f"models:/{MODEL_NAME}@{CHAMPION}", "--tracking-uri", registry.uri,
         "--host", "127.0.0.1", "--port", str(port), "--reload-interval", "0.3"],
        env=env, cwd=elsewhere, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def wait_ready(base: str, proc: subprocess.Popen, timeout: float = 90) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        assert proc.poll() is None, proc.stdout.read().decode() if proc.stdout else ""
        try:
            if httpx.get(f"{base}/readyz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise AssertionError("server never became ready")


@pytest.fixture
def server(registry: Registry, free_port: int) -> Iterator[str]:
    registry.client.set_registered_model_alias(MODEL_NAME, CHAMPION, "1")
    proc = start_server(registry, free_port)
    base = f"http://127.0.0.1:{free_port}"
    try:
        wait_ready(base, proc)
        yield base
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        registry.client.set_registered_model_alias(MODEL_NAME, CHAMPION, "1")


def test_real_request_equals_in_process_prediction(server: str, registry: Registry) -> None:
    reply = httpx.post(f"{server}/v1/forecast", json={"series": [series(48)]}, timeout=30)
    assert reply.status_code == 200
    out = reply.json()
    assert out["model"] == {"name": MODEL_NAME, "version": "1", "alias": CHAMPION}
    local = load_version_forecaster(registry.uri, MODEL_NAME, "1")
    expected = local.predict_arrays([FRAME[CHANNELS].to_numpy(np.float32)[352:400]])[0]
    got = np.array([out["forecasts"][0]["values"][c] for c in CHANNELS]).T
    np.testing.assert_allclose(got, expected, rtol=1e-5)
    assert list((registry.root / "server-cwd").iterdir()) == []  # no stray ./mlflow.db


def _stream(base: str, stop: threading.Event, versions: list[str], failures: list[str]) -> None:
    body = {"series": [series(48)]}
    with httpx.Client(timeout=30) as client:
        while not stop.is_set():
            try:
                reply = client.post(f"{base}/v1/forecast", json=body)
                if reply.status_code != 200:
                    failures.append(f"{reply.status_code}: {reply.text[:200]}")
                else:
                    versions.append(reply.json()["model"]["version"])
            except httpx.HTTPError as err:
                failures.append(repr(err))


def test_alias_move_swaps_without_failing_a_request(server: str, registry: Registry) -> None:
    stop, versions, failures = threading.Event(), [], []
    workers = [threading.Thread(target=_stream, args=(server, stop, versions, failures))
               for _ in range(3)]
    for w in workers:
        w.start()
    try:
        time.sleep(1.0)
        registry.client.set_registered_model_alias(MODEL_NAME, CHAMPION, "2")
        deadline = time.time() + 30
        while time.time() < deadline and (not versions or versions[-1] != "2"):
            time.sleep(0.1)
        time.sleep(1.0)  # keep the stream going after the swap
    finally:
        stop.set()
        for w in workers:
            w.join(timeout=30)
    assert failures == []
    assert versions[0] == "1" and versions[-1] == "2"
    swap = versions.index("2")
    assert set(versions[swap + 3:]) == {"2"}, "responses must name the new version afterwards"
    info = httpx.get(f"{server}/v1/model", timeout=10).json()
    assert info["version"] == "2"


def test_broken_version_leaves_the_old_one_serving(server: str, registry: Registry,
                                                   tmp_path: Path) -> None:
    empty = tmp_path / "not-a-model"
    empty.mkdir()
    broken = registry.client.create_model_version(MODEL_NAME, empty.as_uri())
    registry.client.set_registered_model_alias(MODEL_NAME, CHAMPION, str(broken.version))
    deadline = time.time() + 30
    detail = ""
    while time.time() < deadline:
        ready = httpx.get(f"{server}/readyz", timeout=5)
        detail = ready.json()["detail"]
        if "reload failed" in detail:
            break
        time.sleep(0.2)
    assert ready.status_code == 200
    assert "the last reload failed, still serving v1" in detail
    reply = httpx.post(f"{server}/v1/forecast", json={"series": [series(48)]}, timeout=30)
    assert reply.status_code == 200
    assert reply.json()["model"]["version"] == "1"
    metrics = httpx.get(f"{server}/metrics", timeout=5).text
    failures = next(line for line in metrics.splitlines()
                    if line.startswith("forecast_model_reload_failures_total"))
    assert float(failures.split()[-1]) >= 1
    registry.client.delete_model_version(MODEL_NAME, str(broken.version))


def test_a_client_leaving_mid_body_is_counted_499_not_400(server: str) -> None:
    host, port = server.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(b"POST /v1/forecast HTTP/1.1\r\nHost: x\r\nContent-Type: application/json"
                     b"\r\nContent-Length: 5000\r\n\r\n{\"series\": [")
        time.sleep(0.3)  # the server is now waiting for the rest of the body
    deadline = time.time() + 10
    text = ""
    while time.time() < deadline and 'status="499"' not in text:
        time.sleep(0.2)
        text = httpx.get(f"{server}/metrics", timeout=5).text
    assert 'forecast_http_requests_total{path="/v1/forecast",status="499"} 1.0' in text
    assert 'path="/v1/forecast",status="400"' not in text
