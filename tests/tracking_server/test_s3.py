"""Artifacts in S3 through a real S3 endpoint (moto's server on 127.0.0.1): `mlflow server
--artifacts-destination s3://...` holds the bucket's credentials and endpoint; a client with
only MLFLOW_TRACKING_URI trains, registers and serves (the service's app in this process, which
holds no AWS variable)."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import boto3
import pandas as pd
import pytest
from fastapi.testclient import TestClient
from mlflow import MlflowClient

from forecast.cli import main
from forecast.config import dump_config
from forecast.registry import CHAMPION
from serving.app import create_app
from serving.settings import Settings
from tests.servers import MlflowServer, free_port, wait_until_up
from tests.tracked import config, series_csv
from tests.tracking_server.conftest import Backend

pytestmark = pytest.mark.slow

BUCKET = "forecast-artifacts"
# moto accepts any key; these live only in the server's environment and this test's client
KEYS = {"AWS_ACCESS_KEY_ID": "forecast-test", "AWS_SECRET_ACCESS_KEY": "forecast-test",
        "AWS_DEFAULT_REGION": "us-east-1"}


@pytest.fixture
def s3_endpoint(tmp_path: Path) -> Iterator[str]:
    port = free_port()
    log = open(tmp_path / "moto.log", "wb")  # noqa: SIM115 (the process keeps it)
    proc = subprocess.Popen([str(Path(sys.executable).parent / "moto_server"), "-H",
                             "127.0.0.1", "-p", str(port)], stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)
    log.close()
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_up(f"{url}/moto-api/", proc, timeout=60)
        yield url
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)


def test_a_client_without_bucket_credentials_trains_registers_and_serves(
        backend: Backend, s3_endpoint: str, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    s3 = boto3.client("s3", endpoint_url=s3_endpoint, aws_access_key_id=KEYS[
        "AWS_ACCESS_KEY_ID"], aws_secret_access_key=KEYS["AWS_SECRET_ACCESS_KEY"],
        region_name=KEYS["AWS_DEFAULT_REGION"])
    s3.create_bucket(Bucket=BUCKET)
    server = MlflowServer(backend.postgres.uri, f"s3://{BUCKET}/mlflow", tmp_path / "server",
                          workers=1, env={**KEYS, "MLFLOW_S3_ENDPOINT_URL": s3_endpoint})
    try:
        for name in [*KEYS, "AWS_PROFILE", "AWS_SESSION_TOKEN", "MLFLOW_S3_ENDPOINT_URL"]:
            monkeypatch.delenv(name, raising=False)  # the client knows only the server
        monkeypatch.setenv("MLFLOW_TRACKING_URI", server.uri)
        csv = series_csv(tmp_path / "series.csv", n=800)
        path = tmp_path / "job.yaml"
        path.write_text(dump_config(config(tmp_path, csv, train={"epochs": 1},
                                           tracking={"experiment": "s3",
                                                     "registered_model": "s3-model"})))
        assert main(["train", "--config", str(path)]) == 0
        client = MlflowClient(tracking_uri=server.uri, registry_uri=server.uri)
        version = client.get_model_version_by_alias("s3-model", CHAMPION)
        run = client.get_run(version.run_id)
        assert run.info.artifact_uri.startswith("mlflow-artifacts:")  # proxied, not s3://
        # the run's files and the model are objects in the bucket, under the destination
        keys = [o["Key"] for page in s3.get_paginator("list_objects_v2").paginate(
            Bucket=BUCKET, Prefix="mlflow/") for o in page.get("Contents", [])]
        assert any(k.endswith("/config.yaml") for k in keys), keys
        assert any(k.endswith("/MLmodel") for k in keys), keys

        history = pd.read_csv(csv).iloc[-48:]
        body = {"series": [{"id": "s", "history": {c: history[c].tolist()
                                                   for c in ("a", "b")}}]}
        with TestClient(create_app(Settings(model_uri=f"models:/s3-model@{CHAMPION}"))) as svc:
            deadline = time.monotonic() + 60
            while svc.get("/readyz").status_code != 200 and time.monotonic() < deadline:
                time.sleep(0.2)
            ready = svc.get("/readyz").json()
            reply = svc.post("/v1/forecast", json=body)
        assert ready["model"]["version"] == version.version, ready
        assert reply.status_code == 200, reply.text
        assert len(reply.json()["forecasts"][0]["values"]["a"]) == 12
    finally:
        server.stop(signal.SIGKILL)
