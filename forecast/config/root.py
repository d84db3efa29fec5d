"""The whole configuration of a run: every section, and the checks that span two of them."""

from __future__ import annotations

import posixpath
from typing import Any

from pydantic import (
    Field,
    model_validator,
)

from forecast.config.data import DataConfig, SplitConfig, WindowConfig
from forecast.config.fields import LocalPath, Section, kinds_of
from forecast.config.jobs import PipelineConfig, TrackingConfig
from forecast.config.model import ModelConfig
from forecast.config.search import TuneConfig
from forecast.config.training import EvalConfig, TrainConfig


class Config(Section):
    """The whole resolved configuration of a run."""

    name: str = Field("forecast", description="Short name of this model/dataset configuration.")
    output_dir: LocalPath = Field("outputs", description="Where runs write their files.")
    data: DataConfig = DataConfig()
    split: SplitConfig = SplitConfig()
    windows: WindowConfig = WindowConfig()
    model: ModelConfig = ModelConfig()
    train: TrainConfig = TrainConfig()
    eval: EvalConfig = EvalConfig()
    tracking: TrackingConfig = TrackingConfig()
    pipeline: PipelineConfig = PipelineConfig()
    tune: TuneConfig = TuneConfig()

    @property
    def registered_model(self) -> str:
        return self.tracking.registered_model or self.name

    @model_validator(mode="after")
    def _cross_checks(self) -> Config:
        lookback, patch = self.windows.lookback, self.model.patch_len
        if patch > lookback:
            raise ValueError(
                f"model.patch_len ({patch}) is longer than windows.lookback ({lookback}); "
                "shorten the patch or lengthen the lookback"
            )
        rank, horizon = self.model.skip_rank, self.windows.horizon
        if rank is not None and rank >= horizon:
            raise ValueError(
                f"model.skip_rank ({rank}) must be below windows.horizon ({horizon}): at full "
                "rank nothing is reduced; lower it or set it to null"
            )
        min_history = self.model.min_history
        if min_history is not None and not patch <= min_history <= lookback:
            raise ValueError(
                f"model.min_history ({min_history}) must lie between model.patch_len ({patch}) "
                f"and windows.lookback ({lookback})"
            )
        if self.tracking.enabled and self.tracking.auto_register:
            # checked here, not by the registry after a whole training run
            name, key = ((self.tracking.registered_model, "tracking.registered_model")
                         if self.tracking.registered_model is not None
                         else (self.name, "name (the registered model's name by default)"))
            bad = sorted({c for c in name if c in "/:'\""})  # quotes break registry filters
            # MLflow's own rule (mlflow.utils.validation), restated: importing mlflow here
            # would load it into every process that reads a config, +50 MB in each training
            norm = posixpath.normpath(name)
            if not name.strip() or norm != name or norm == "." or norm.startswith(".."):
                bad = bad or ["a path MLflow refuses"]
            if bad:
                raise ValueError(
                    f"{key} {name!r} cannot name an MLflow registered model: give a non-blank "
                    f"name without / : ' or \", not starting with .. (it has {' '.join(bad)})"
                )
        return self

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    def flat(self) -> dict[str, Any]:
        """Dotted names → values, e.g. {'model.d_model': 64}: for MLflow params and tables."""
        out: dict[str, Any] = {}

        def walk(prefix: str, node: Any) -> None:
            if isinstance(node, dict):
                for key, value in node.items():
                    walk(f"{prefix}.{key}" if prefix else key, value)
            else:
                out[prefix] = node

        walk("", self.to_dict())
        return out


def integer_setting(key: str) -> bool:
    """Whether the dotted setting `key` (e.g. `model.d_model`) holds a whole number."""
    model: Any = Config
    *sections, last = key.split(".")
    for part in sections:
        model = model.model_fields[part].annotation
    kinds = kinds_of(model.model_fields[last].annotation)
    return int in kinds and float not in kinds
