"""serving/deploy/kubernetes.yaml, parsed and checked: the replicas' probes, resources, secret
and config, and the objects that scale, drain and expose them fit each other and the service."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from forecast.cli import build_parser
from serving.settings import Settings

MANIFEST = Path(__file__).resolve().parent.parent / "serving" / "deploy" / "kubernetes.yaml"


@pytest.fixture(scope="module")
def objects() -> dict[str, dict[str, Any]]:
    docs = [d for d in yaml.safe_load_all(MANIFEST.read_text()) if d is not None]
    kinds = [d["kind"] for d in docs]
    assert len(kinds) == len(set(kinds)), kinds  # one of each
    return {d["kind"]: d for d in docs}


def container(objects: dict[str, dict[str, Any]]) -> dict[str, Any]:
    (one,) = objects["Deployment"]["spec"]["template"]["spec"]["containers"]
    return one


def cpu_cores(quantity: str) -> float:
    return int(quantity[:-1]) / 1000 if quantity.endswith("m") else float(quantity)


def mebibytes(quantity: str) -> float:
    units = {"Mi": 1, "Gi": 1024}
    return float(quantity[:-2]) * units[quantity[-2:]]


def test_the_manifest_holds_the_objects_a_replicated_service_needs(objects: dict) -> None:
    assert set(objects) == {"ConfigMap", "Deployment", "HorizontalPodAutoscaler",
                            "PodDisruptionBudget", "Service"}
    assert objects["Deployment"]["apiVersion"] == "apps/v1"
    assert objects["HorizontalPodAutoscaler"]["apiVersion"] == "autoscaling/v2"
    assert objects["PodDisruptionBudget"]["apiVersion"] == "policy/v1"


def test_readiness_waits_for_the_model_and_liveness_only_for_the_process(objects: dict) -> None:
    c = container(objects)
    (port,) = c["ports"]
    assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": port["name"]}
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": port["name"]}
    # the command serves on the port the probes and the Service use
    args = build_parser().parse_args(c["command"][1:])
    assert c["command"][0] == "forecast" and args.func.__name__ == "cmd_serve"
    assert args.port == port["containerPort"] and args.host == "0.0.0.0"


def test_torch_threads_match_the_cpu_limit_and_requests_fit_the_limits(objects: dict) -> None:
    c = container(objects)
    env = {e["name"]: e for e in c["env"]}
    limits, requests = c["resources"]["limits"], c["resources"]["requests"]
    assert int(env["FORECAST_TORCH_THREADS"]["value"]) == cpu_cores(limits["cpu"])
    assert cpu_cores(requests["cpu"]) <= cpu_cores(limits["cpu"])
    assert mebibytes(requests["memory"]) <= mebibytes(limits["memory"])


def test_the_token_comes_from_a_secret_and_the_tracking_uri_from_config(objects: dict) -> None:
    c = container(objects)
    env = {e["name"]: e for e in c["env"]}
    assert "value" not in env["FORECAST_API_TOKEN"]
    assert set(env["FORECAST_API_TOKEN"]["valueFrom"]["secretKeyRef"]) == {"name", "key"}
    (source,) = c["envFrom"]
    config = objects["ConfigMap"]
    assert source["configMapRef"]["name"] == config["metadata"]["name"]
    assert config["data"]["MLFLOW_TRACKING_URI"].startswith("http")


def test_every_service_setting_in_the_manifest_is_one_the_service_reads(objects: dict) -> None:
    # a misspelt FORECAST_* variable would be ignored silently: each must name a setting,
    # and the values given must validate as the service validates them at start
    c = container(objects)
    given = {k: v for k, v in objects["ConfigMap"]["data"].items() if k.startswith("FORECAST_")}
    given.update({e["name"]: e.get("value", "a-token-from-the-secret") for e in c["env"]})
    fields = {f"FORECAST_{name.upper()}" for name in Settings.model_fields}
    assert set(given) <= fields, set(given) - fields
    settings = Settings(**{k.removeprefix("FORECAST_").lower(): v for k, v in given.items()})
    assert settings.model_uri.startswith("models:/") and "@" in settings.model_uri


def test_a_rolling_update_or_a_drain_never_takes_the_last_ready_replica(objects: dict) -> None:
    deployment = objects["Deployment"]["spec"]
    assert deployment["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    hpa, pdb = objects["HorizontalPodAutoscaler"]["spec"], objects["PodDisruptionBudget"]["spec"]
    assert hpa["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment",
                                     "name": objects["Deployment"]["metadata"]["name"]}
    assert 1 <= pdb["minAvailable"] < hpa["minReplicas"] <= deployment["replicas"] \
        <= hpa["maxReplicas"]
    (metric,) = hpa["metrics"]
    assert metric["resource"]["name"] == "cpu"
    assert 0 < metric["resource"]["target"]["averageUtilization"] < 100


def test_shutdown_leaves_time_for_in_flight_requests(objects: dict) -> None:
    pod = objects["Deployment"]["spec"]["template"]["spec"]
    drain = container(objects)["lifecycle"]["preStop"]["sleep"]["seconds"]
    longest_request = Settings.model_fields["request_timeout_s"].default
    assert pod["terminationGracePeriodSeconds"] > drain + longest_request


def test_the_service_and_budget_select_the_deployments_pods(objects: dict) -> None:
    labels = objects["Deployment"]["spec"]["template"]["metadata"]["labels"]
    assert objects["Deployment"]["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert objects["PodDisruptionBudget"]["spec"]["selector"]["matchLabels"].items() \
        <= labels.items()
    service = objects["Service"]["spec"]
    assert service["selector"].items() <= labels.items()
    (port,) = service["ports"]
    assert port["targetPort"] == container(objects)["ports"][0]["name"]
