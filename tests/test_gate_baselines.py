"""A model is never promoted when it loses, on validation, to a baseline its own run scores,
and a run whose validation kept the least-squares linear forecast alone says so: as a tag, in
the CLI's summary, in `forecast models list` and in `forecast runs compare`."""

from __future__ import annotations

from pathlib import Path

import pytest
from mlflow import MlflowClient

from forecast.cli import main
from forecast.config import dump_config
from forecast.registry import CHAMPION
from forecast.tracking import train_tracked
from tests.tracked import EXPERIMENT, NAME, config, series_csv


def test_a_model_worse_than_its_baselines_is_not_promoted_even_as_the_first(
        tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    csv = series_csv(tmp_path / "series.csv")
    # a learning rate so small that the model keeps its random initial weights
    barely = {"lr": 1e-7, "epochs": 1}
    first = train_tracked(config(tmp_path / "r1", csv, train=barely,
                                 tracking={"allow_below_baselines": False}), uri)
    validation = first.outcome.validation
    assert validation.model.mse > validation.baselines["linear"].mse
    assert first.decision is not None and not first.decision.promoted
    assert "on validation loses to" in first.decision.reason
    assert "the linear baseline" in first.decision.reason
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    assert CHAMPION not in client.get_registered_model(NAME).aliases  # nothing to serve
    v1 = client.get_model_version(NAME, "1")
    assert v1.tags["gate.decision"] == "rejected"
    # the run logs the validation scores the gate acted on, beside the test ones
    metrics = client.get_run(first.run_id).data.metrics
    assert metrics["val_mse"] == pytest.approx(validation.model.mse)
    assert metrics["val_skill_linear"] < 0 and "skill_linear" in metrics

    # told otherwise, the same model is promoted, and the reason still says what it loses to
    allowed = train_tracked(config(tmp_path / "r2", csv, train=barely,
                                   tracking={"allow_below_baselines": True}), uri)
    assert allowed.decision is not None and allowed.decision.promoted
    assert "allowed below baselines" in allowed.decision.reason
    assert client.get_registered_model(NAME).aliases[CHAMPION] in (2, "2")


def test_a_run_that_keeps_the_linear_forecast_alone_says_so(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    csv = series_csv(tmp_path / "series.csv")
    # the least-squares skip is solved first ("epoch 0"); a learning rate of 1 wrecks every
    # trained epoch after it, so validation keeps the linear forecast alone
    cfg = config(tmp_path, csv, model={"linear_skip": True, "skip_fit": "least_squares"},
                 train={"lr": 1.0, "epochs": 2},
                 tracking={"allow_below_baselines": True})
    path = tmp_path / "job.yaml"
    path.write_text(dump_config(cfg))
    assert main(["train", "--config", str(path), "--tracking-uri", uri]) == 0
    out = capsys.readouterr().out
    assert "note: validation kept the least-squares linear forecast alone (best epoch 0)" in out
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    [run] = client.search_runs([client.get_experiment_by_name(EXPERIMENT).experiment_id])
    assert run.data.tags["model.linear_only"] == "true"
    assert client.get_model_version(NAME, "1").tags["model.linear_only"] == "true"

    assert main(["models", "list", NAME, "--tracking-uri", uri]) == 0
    header, row = capsys.readouterr().out.splitlines()[:2]
    assert row.split()[header.split().index("encoder")] == "no"
    assert main(["runs", "compare", "--experiment", EXPERIMENT, "--tracking-uri", uri]) == 0
    header, row = capsys.readouterr().out.splitlines()[:2]
    assert row.split()[header.split().index("encoder")] == "no"

    # a model trained by gradient throughout has no "epoch 0": neither yes nor no
    trained = train_tracked(config(tmp_path / "g", csv,
                                   tracking={"allow_below_baselines": True}), uri)
    assert trained.outcome.linear_only is None
    assert "model.linear_only" not in client.get_run(trained.run_id).data.tags
