"""End to end: `forecast serve` as a real uvicorn process on 127.0.0.1, a real MLflow
registry, real HTTP. Includes the hot swap under a stream of requests and a broken version."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
from prometheus_client.mmap_dict import MmapedDict

from forecast.registry import CHAMPION, load_version_forecaster
from tests.serving.conftest import MODEL_NAME, Registry
from tests.serving.test_forecast_api import CHANNELS, FRAME, series

pytestmark = pytest.mark.slow


def start_server(registry: Registry, port: int, *args: str,
                 **env_extra: str) -> subprocess.Popen:
    # The store is named by --tracking-uri alone, from a folder that does not hold it, so that
    # nothing may fall back to $MLFLOW_TRACKING_URI or ./mlflow.db. The `forecast` command
    # itself, as a deployment runs it (its entry point handles signals before uvicorn does).
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"} | env_extra
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    elsewhere = registry.root / "server-cwd"
    elsewhere.mkdir(exist_ok=True)
    return subprocess.Popen(
        [str(Path(sys.executable).parent / "forecast"), "-q", "serve", "--model",
         f"models:/{MODEL_NAME}@{CHAMPION}", "--tracking-uri", registry.uri,
         "--host", "127.0.0.1", "--port", str(port), "--reload-interval", "0.3", *args],
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


OK_COUNT = re.compile(r'^forecast_http_requests_total\{path="/v1/forecast",status="200"\} '
                      r'(\S+)$', re.M)


def served_count(base: str) -> float:
    """The 200s /metrics reports for /v1/forecast (0 when none yet)."""
    found = OK_COUNT.search(httpx.get(f"{base}/metrics", timeout=10).text)
    return float(found[1]) if found else 0.0


def per_worker_counts(folder: Path) -> dict[int, float]:
    """The 200s for /v1/forecast each worker wrote to its metrics file, by worker pid."""
    counts: dict[int, float] = {}
    for path in folder.glob("counter_*.db"):
        for key, value, *_ in MmapedDict.read_all_values_from_file(str(path)):
            metric, name, labels, _help = json.loads(key)
            if name == "forecast_http_requests_total" and labels == {
                    "path": "/v1/forecast", "status": "200"}:
                pid = int(path.stem.split("_")[1])
                counts[pid] = counts.get(pid, 0.0) + value
    return counts


def post_many(base: str, n: int) -> None:
    """n forecasts from 8 threads, each on a fresh connection, so both workers take some."""
    body = {"series": [series(48)]}

    def one(_: int) -> int:
        with httpx.Client(timeout=30) as client:
            return client.post(f"{base}/v1/forecast", json=body).status_code

    with ThreadPoolExecutor(8) as pool:
        assert set(pool.map(one, range(n))) == {200}


def test_metrics_of_two_workers_are_summed_and_start_from_zero(
        registry: Registry, free_port: int, tmp_path: Path) -> None:
    registry.client.set_registered_model_alias(MODEL_NAME, CHAMPION, "1")
    folder, base = tmp_path / "metrics", f"http://127.0.0.1:{free_port}"
    for start in range(2):
        proc = start_server(registry, free_port, "--workers", "2",
                            PROMETHEUS_MULTIPROC_DIR=str(folder))
        try:
            wait_ready(base, proc)
            # each worker loads its own model: wait until fresh connections, whichever worker
            # takes them, all find one
            deadline, streak = time.time() + 90, 0
            while streak < 20 and time.time() < deadline:
                ok = httpx.get(f"{base}/readyz", timeout=5).status_code == 200
                streak = streak + 1 if ok else 0
            assert streak == 20, "a worker never loaded its model"
            # a second start empties the folder: the first run's counts are not carried on
            assert served_count(base) == 0.0
            sent = 0
            while len(per_worker_counts(folder)) < 2 and sent < 400:
                post_many(base, 40)
                sent += 40
            # a request is counted once its answer has gone out: let the last ones land
            deadline = time.time() + 10
            while sum(per_worker_counts(folder).values()) < sent and time.time() < deadline:
                time.sleep(0.1)
            counts = per_worker_counts(folder)
            assert len(counts) == 2 and all(v > 0 for v in counts.values()), counts
            assert sum(counts.values()) == sent
            # whichever worker answers the scrape reports every worker's requests
            assert {served_count(base) for _ in range(6)} == {float(sent)}, start
        finally:
            proc.terminate()
            assert proc.wait(timeout=60) == 0


def test_sigterm_lets_a_request_in_flight_finish(registry: Registry, free_port: int) -> None:
    registry.client.set_registered_model_alias(MODEL_NAME, CHAMPION, "1")
    proc = start_server(registry, free_port)
    base = f"http://127.0.0.1:{free_port}"
    try:
        wait_ready(base, proc)
        body = json.dumps({"series": [series(48)]}).encode()
        with socket.create_connection(("127.0.0.1", free_port), timeout=30) as sock:
            sock.sendall(b"POST /v1/forecast HTTP/1.1\r\nHost: x\r\nContent-Type: "
                         b"application/json\r\nContent-Length: " + str(len(body)).encode()
                         + b"\r\n\r\n" + body[:20])
            time.sleep(0.5)  # the server is reading this request's body
            proc.send_signal(signal.SIGTERM)  # as Kubernetes stops a pod
            time.sleep(1.0)
            assert proc.poll() is None  # still up: a request is in flight
            sock.sendall(body[20:])
            reply = b""
            while b"\r\n\r\n" not in reply or not reply.rstrip().endswith(b"}"):
                chunk = sock.recv(65536)
                if not chunk:
                    break
                reply += chunk
        assert reply.startswith(b"HTTP/1.1 200 "), reply[:300]
        assert json.loads(reply.split(b"\r\n\r\n", 1)[1])["forecasts"][0]["id"] == "s1"
        assert proc.wait(timeout=30) == 0  # then it stops, cleanly
        with pytest.raises(httpx.ConnectError):  # and takes no new requests
            httpx.get(f"{base}/healthz", timeout=2)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)
