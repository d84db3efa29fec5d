"""The hyperparameter search's settings (`forecast tune`): its budget and its space."""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import (
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from forecast.config.fields import Section, error_lines
from forecast.config.model import ModelConfig


class Range(Section):
    """A numeric search range; sampled as integers when the setting is an integer."""

    low: float
    high: float
    log: bool = Field(False, description="Sample on a log scale (learning rates).")

    @model_validator(mode="after")
    def _check_order(self) -> Range:
        if not self.low < self.high:
            raise ValueError(f"range low ({self.low}) must be below high ({self.high})")
        if self.log and self.low <= 0:
            raise ValueError("a log range needs low > 0")
        return self


# `model.skip` in tune.space: one choice for the settings that make the linear skip, as a
# new dataset needs it searched (off, solved by least squares, solved robustly)
SKIP_KEY = "model.skip"
SKIP_CHOICES: dict[str, dict[str, Any]] = {
    "off": {"model.linear_skip": False, "model.skip_fit": "gradient",
            "model.skip_level": False, "model.skip_per_channel": False,
            "model.skip_huber_delta": None, "model.skip_rank": None},
    "least_squares": {"model.linear_skip": True, "model.skip_fit": "least_squares",
                      "model.skip_level": True, "model.skip_huber_delta": None},
    "robust": {"model.linear_skip": True, "model.skip_fit": "least_squares",
               "model.skip_level": True,
               "model.skip_huber_delta": ModelConfig.model_fields["skip_huber_delta"].default},
}


# train settings a sweep sets for every trial itself, or that change no score
UNSEARCHED = ("train.checkpoint_dir", "train.resume", "train.progress")


class TuneConfig(Section):
    """Hyperparameter search (`forecast tune`), scored on the validation split only."""

    trials: int = Field(100, gt=0, description="Most trials to run (the budget usually ends "
                        "the search first).")
    budget_minutes: float | None = Field(
        30.0, gt=0, description="The search ends within this many minutes: no trial starts "
        "after it, and a running trial stops at its next batch; null: no limit."
    )
    trial_windows_per_epoch: int | None = Field(
        8192, gt=0, description="Each trial trains on at most this many windows per epoch, "
        "drawn afresh each epoch, so that trials on a large set stay cheap (a smaller "
        "train.max_windows_per_epoch wins); the tuned config keeps train.max_windows_per_epoch."
        " null: every window.")
    sampler: Literal["tpe", "random", "grid"] = Field(
        "tpe", description="Optuna sampler; grid needs every entry of `space` to be a list."
    )
    metric: Literal["mse", "mae"] = Field("mse", description="Validation metric to minimise.")
    seed: int = Field(0, ge=0, lt=2**32, description="Sampler seed.")
    prune: bool = Field(True, description="Stop trials whose validation loss falls behind the "
                        "median of earlier trials at the same epoch.")
    space: dict[str, list[Any] | Range] | None = Field(
        None, description="Dotted config key → list of choices or {low, high, log} range; "
        "`model.skip` chooses among off, least_squares and robust. null: chosen from the data "
        "(lookback from its frequency and length, the skip, d_model, lr and dropout).",
    )

    @field_validator("space", mode="before")
    @classmethod
    def _parse_space(cls, raw: Any) -> dict[str, list[Any] | Range] | None:
        # Parsed by hand: pydantic's union errors name both branches ("list[any]: Input
        # should be a valid list; function-after[...]") instead of the problem.
        if raw is None:
            return None
        if not isinstance(raw, dict):
            raise ValueError("map dotted config keys to a list of choices or {low, high, log}")
        space: dict[str, list[Any] | Range] = {}
        for key, choice in raw.items():
            if str(key).split(".")[0] in ("tune", "tracking", "pipeline", "output_dir", "name") \
                    or key in UNSEARCHED:
                raise ValueError(f"{key}: only settings that change the model can be searched")
            if isinstance(choice, dict) and "." not in str(key) \
                    and not set(choice) & {"low", "high", "log"}:
                # `--set tune.space.train.lr=...` nests {train: {lr: ...}}
                raise ValueError(f"{key}: keys of tune.space are whole dotted settings; "
                                 "give the space as one mapping, e.g. --set "
                                 "'tune.space={train.lr: [0.0005, 0.001]}'")
            if not isinstance(key, str) or not re.fullmatch(r"\w+(\.\w+)+", key):
                raise ValueError(f"{key!r} is not a dotted setting; name one such as train.lr")
            if key.startswith("data."):  # a sweep reads its data once, for every trial
                raise ValueError(f"{key}: data settings cannot be searched (every trial trains "
                                 "on the data read once); run one sweep per data setting")
            one = isinstance(choice, list) and len(choice) < 2
            if key.startswith("split.") and not one:
                # each trial would be scored on its own validation block: scores not comparable
                raise ValueError(f"{key}: give one choice; split settings move the validation "
                                 "block, so trials with different splits cannot be compared "
                                 "(run one sweep per split)")
            if key == "windows.horizon" and not one:  # a shorter horizon always scores better
                raise ValueError(f"{key}: give one choice; trials at different horizons "
                                 "forecast different targets and cannot be compared (run one "
                                 "sweep per horizon)")
            if key == SKIP_KEY:
                if not isinstance(choice, list) or not choice \
                        or not set(map(str, choice)) <= set(SKIP_CHOICES):
                    raise ValueError(f"{key}: give a list of {', '.join(SKIP_CHOICES)}")
                space[key] = choice
            elif isinstance(choice, Range):
                space[key] = choice
            elif isinstance(choice, list):
                if not choice:
                    raise ValueError(f"{key}: give at least one choice")
                space[key] = choice
            elif isinstance(choice, dict):
                try:
                    space[key] = Range.model_validate(choice)
                except ValidationError as err:
                    raise ValueError(f"{key}: {error_lines(err)}") from None
            else:
                raise ValueError(f"{key}: give a list of choices or {{low, high, log}}")
        if not space:  # every trial would train the same config
            raise ValueError("is empty: give at least one setting to search, e.g. "
                             "{train.lr: [0.0005, 0.001]}")
        return space

    @model_validator(mode="after")
    def _check_grid(self) -> TuneConfig:
        if self.sampler == "grid" and self.space is None:
            raise ValueError("tune.sampler 'grid' needs tune.space given as lists of choices "
                             "(the space chosen from the data has ranges); give one or use "
                             "'tpe'")
        if self.sampler == "grid" and any(isinstance(v, Range) for v in self.space.values()):
            raise ValueError("tune.sampler 'grid' needs a list of choices for every key in "
                             "tune.space; replace the {low, high} ranges or use 'tpe'")
        return self
