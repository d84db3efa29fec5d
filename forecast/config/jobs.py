"""Settings of what runs around training: MLflow tracking and the gate, and the scheduled job."""

from __future__ import annotations

import re
from typing import Any, Literal

import pandas as pd
from pydantic import (
    Field,
    field_validator,
    model_validator,
)

from forecast.config.fields import LocalPath, Section


class TrackingConfig(Section):
    """MLflow tracking, model registry and the champion/challenger gate."""

    enabled: bool = Field(True, description="Log the run to MLflow and register the model.")
    uri: str | None = Field(
        None,
        description="Tracking URI. null: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db (MLflow "
        "3's default). A PostgreSQL-backed `mlflow server` is the scale-out option.",
    )
    experiment: str = Field("forecast", description="MLflow experiment name.")

    @field_validator("uri")
    @classmethod
    def _uri_not_blank(cls, uri: str | None) -> str | None:
        # a blank URI would silently mean the default ./mlflow.db, as --tracking-uri '' did
        if uri is not None and not uri.strip():
            raise ValueError("is empty: give a URI (e.g. sqlite:///mlflow.db or "
                             "http://host:5000) or null for the default")
        return uri
    registered_model: str | None = Field(
        None, description="Registered model name; default: the config's name."
    )
    auto_register: bool = Field(True, description="Register each successful run's model.")
    metric: Literal["mse", "mae", "mase", "smape"] = Field(
        "mse", description="Metric (lower is better) the promotion gate compares."
    )
    allow_below_baselines: bool = Field(
        False,
        description="Let the gate promote a model that scores worse on validation (by "
        "tracking.metric) than the linear or seasonal-naive baseline the same run scores. "
        "false: such a model is registered but never promoted, the first version included.",
    )
    margin: float = Field(
        0.0, ge=0, lt=1,
        description="Relative improvement the challenger needs over the champion: 0.01 = 1%.",
    )
    timeout_seconds: float = Field(
        10.0, gt=0, allow_inf_nan=False,
        description="How long the pre-flight check waits for a tracking server."
    )


class PipelineConfig(Section):
    """The scheduled training job (`forecast pipeline train`): freshness gate and lock."""

    max_data_age: str | None = Field(
        None,
        description="Refuse to train when the newest timestamp is older than this pandas "
        "Timedelta ('6h', '2D') before now (or --as-of); null: no freshness gate. Timestamps "
        "without a time zone are read as UTC.",
    )
    lock_dir: LocalPath | None = Field(
        None,
        description="Folder for the job's lock file; default <output_dir>/locks. Every host "
        "that runs the job must see the same folder.",
    )

    @field_validator("max_data_age", mode="before")
    @classmethod
    def _number_is_no_duration(cls, value: Any) -> Any:
        if isinstance(value, int | float) and not isinstance(value, bool):  # YAML's `6`
            raise ValueError(f"{value!r} is a number, not a duration with a unit; use e.g. "
                             "'6h' or '2D'")
        return value

    @model_validator(mode="after")
    def _check_age(self) -> PipelineConfig:
        if self.max_data_age is not None:
            try:
                if not re.search(r"[A-Za-z]", self.max_data_age):  # '6' would be 6 nanoseconds
                    raise ValueError
                age = pd.Timedelta(self.max_data_age)
            except ValueError:
                raise ValueError(f"pipeline.max_data_age = {self.max_data_age!r} is not a "
                                 "duration with a unit (at most about 292 years); use e.g. "
                                 "'6h' or '2D'") from None
            if pd.isna(age) or age <= pd.Timedelta(0):  # NaT would pass every age check
                raise ValueError("pipeline.max_data_age must be a positive duration")
        return self

    @property
    def max_age(self) -> pd.Timedelta | None:
        return None if self.max_data_age is None else pd.Timedelta(self.max_data_age)
