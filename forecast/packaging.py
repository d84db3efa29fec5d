"""The trained model as an MLflow pyfunc, logged as "models from code" so that nothing of ours
is cloudpickled: MLflow re-runs `forecast/pyfunc_model.py` to build the wrapper, and the
wrapper reads safetensors weights and JSON (see forecast/bundle.py).

Input: a history frame (forecast/predictor.py): optional `series_id`, optional timestamp
column, one numeric column per channel. Params: optional `horizon` (1..H); `levels`, central
interval levels in percent as text ("80,95" by default, of those the model's calibration can
give; "" for none); `quantiles`, quantile levels as text ("0.1,0.9"; none by default).
Output: `series_id`, `step`, [timestamp], one column per channel, then per channel
`<channel>-q-<percent>` per quantile and `<channel>-lo-<level>`, `<channel>-hi-<level>` per
interval (Nixtla's names).
"""

from __future__ import annotations

import warnings
from importlib import metadata
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd
from mlflow.models import Model, infer_signature
from mlflow.models.model import ModelInfo
from mlflow.types import ColSpec, Schema

import forecast
from forecast.bundle import load_bundle
from forecast.intervals import parse_levels, percent_name
from forecast.predictor import SERIES_ID, Forecaster

ARTIFACT_KEY = "model_dir"
CODE_FILE = Path(__file__).with_name("pyfunc_model.py")
_REQUIREMENTS = ("torch", "numpy", "pandas", "scikit-learn", "safetensors", "pydantic",
                 "pyyaml", "mlflow")


class ForecastModel(mlflow.pyfunc.PythonModel):
    """pyfunc wrapper around a `Forecaster` loaded from the bundle artifact."""

    def load_context(self, context: Any) -> None:
        self.forecaster = Forecaster(load_bundle(context.artifacts[ARTIFACT_KEY]))

    # pd.DataFrame is a hint MLflow accepts without deriving a schema from it; the logged
    # signature describes the columns.
    def predict(self, context: Any, model_input: pd.DataFrame,
                params: dict[str, Any] | None = None) -> pd.DataFrame:
        params = params or {}
        horizon = params.get("horizon")
        levels = params.get("levels")
        levels = default_levels(self.forecaster) if levels is None else \
            parse_levels(levels, "params.levels", percent=True) if levels else []
        quantiles = parse_levels(params["quantiles"], "params.quantiles", percent=False) \
            if params.get("quantiles") else []
        return self.forecaster.predict_frame(
            model_input, None if horizon is None else int(horizon), quantiles, levels)


DEFAULT_LEVELS = (0.8, 0.95)


def default_levels(forecaster: Forecaster) -> list[float]:
    """The 80% and 95% intervals, those of them the model's calibration can give."""
    calibration = forecaster.bundle.calibration
    return [] if calibration is None else [c for c in DEFAULT_LEVELS if calibration.gives(c)]


def requirements() -> list[str]:
    pins = []
    for name in _REQUIREMENTS:
        try:
            pins.append(f"{name}=={metadata.version(name)}")
        except metadata.PackageNotFoundError:
            pins.append(name)
    return pins


def log_pyfunc(bundle_dir: Path, input_example: pd.DataFrame, name: str = "model") -> ModelInfo:
    """Log the bundle as a pyfunc model in the active run, with signature and input example."""
    forecaster = Forecaster(load_bundle(bundle_dir))
    levels = default_levels(forecaster)
    output = forecaster.predict_frame(input_example, levels=levels)
    example = input_example.copy()
    example.insert(0, SERIES_ID, "series")
    with warnings.catch_warnings():  # of integer columns that could hold missing values: the
        # only one is the output's `step`, 1..horizon, never missing
        warnings.filterwarnings("ignore", "Hint: Inferred schema contains integer column",
                                UserWarning)
        signature = infer_signature(example, output, params={
            "horizon": forecaster.horizon, "quantiles": "",
            "levels": ",".join(percent_name(c) for c in levels)})
    # series_id and the timestamps may be left out (one series; no future timestamps)
    optional = {SERIES_ID, forecaster.meta.timestamp_column}
    signature.inputs = Schema([
        ColSpec(c.type, c.name, required=c.name not in optional) for c in signature.inputs.inputs
    ])
    return mlflow.pyfunc.log_model(
        name=name,
        python_model=str(CODE_FILE),
        artifacts={ARTIFACT_KEY: str(bundle_dir)},
        # The package travels with the model, so a loader needs only the pinned libraries.
        code_paths=[str(Path(forecast.__file__).parent)],
        signature=signature,
        input_example=input_example,
        pip_requirements=requirements(),
    )


def bundle_path(downloaded_model_dir: str | Path) -> Path:
    """Where the bundle lies inside a downloaded pyfunc model directory (per its MLmodel)."""
    root = Path(downloaded_model_dir)
    flavor = Model.load(str(root / "MLmodel")).flavors["python_function"]
    return root / flavor["artifacts"][ARTIFACT_KEY]["path"]
