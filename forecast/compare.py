"""The run comparison the MLflow UI shows, as a table in the terminal."""

from __future__ import annotations

import mlflow
import pandas as pd
from mlflow import MlflowClient

from forecast.errors import ForecastError
from forecast.registry import champion_version

KEY_PARAMS = ("windows.lookback", "windows.horizon", "model.d_model", "model.n_layers",
              "model.patch_len", "train.lr", "train.epochs")
KEY_METRICS = ("test_mse", "test_mae", "test_mase", "test_smape", "skill_naive",
               "skill_seasonal_naive", "skill_linear", "val_skill_linear",
               # how often the test block fell inside the 80% and 95% intervals; quantile loss
               "test_coverage_80", "test_coverage_95", "test_wql", "train_seconds")


def compare_runs(uri: str, experiment: str, last: int) -> pd.DataFrame:
    """The last `last` runs of `experiment`: name, status, key params, metrics, champion mark."""
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        names = [e.name for e in client.search_experiments()]
        raise ForecastError(f"no experiment named {experiment!r} in {uri}; experiments: {names}")
    if exp.lifecycle_stage == "deleted":  # its runs are hidden: it would show as "no runs"
        raise ForecastError(f"experiment {experiment!r} in {uri} is deleted; restore it "
                            f"(`mlflow experiments restore --experiment-id {exp.experiment_id}`)")
    mlflow.set_tracking_uri(uri)
    runs = mlflow.search_runs(experiment_ids=[exp.experiment_id], max_results=last,
                              order_by=["attributes.start_time DESC"])
    if runs.empty:
        return pd.DataFrame()
    champions = set()
    for name in runs.get("tags.model.registered_name", pd.Series(dtype=str)).dropna().unique():
        version = champion_version(client, name)
        if version is not None:
            champions.add(version.run_id)
    table = pd.DataFrame({
        "run": runs["tags.mlflow.runName"],
        "status": runs["status"],
        "version": runs.get("tags.model.version", pd.Series([None] * len(runs))).fillna("-"),
        "champion": ["*" if r in champions else "" for r in runs["run_id"]],
        # no: validation kept the least-squares linear forecast alone, the encoder adds nothing
        "encoder": runs.get("tags.model.linear_only", pd.Series([None] * len(runs)))
        .map({"true": "no", "false": "yes"}).fillna("-"),
    })
    for key in KEY_PARAMS:
        table[key.split(".", 1)[1]] = runs.get(f"params.{key}")
    for key in KEY_METRICS:
        col = runs.get(f"metrics.{key}")
        table[key] = col.round(4) if col is not None else None
    return table
