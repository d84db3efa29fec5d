"""One typed configuration for every stage: data → split → windows → model → train → evaluate.

The YAML file, the CLI overrides and the defaults are merged and validated here, once. Every
other module receives the resulting `Config` (or one of its sections) and trusts it.
"""

from __future__ import annotations

import os
import posixpath
import re
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

import pandas as pd
import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from forecast.errors import ConfigError


def _local_path(value: str) -> str:
    # an empty path read as "unset" sent files and locks to the default place without a word
    if not value.strip():
        raise ValueError("is empty: give a path, or leave the key out for the default")
    # a config is not seen by a shell: a leading ~ would name a folder called "~" in the
    # working directory (and two cron jobs in different folders would hold different locks)
    return os.path.expanduser(value)


LocalPath = Annotated[str, AfterValidator(_local_path)]


def _kinds(annotation: Any) -> set[Any]:
    """The types a field takes: {int, NoneType} for `int | None`, {float} for `float`."""
    return set(get_args(annotation)) or {annotation}


class _Section(BaseModel):
    # Unknown keys are typos far more often than intentional: reject them by name.
    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    @field_validator("*", mode="before")
    @classmethod
    def _no_booleans_as_numbers(cls, value: Any, info: ValidationInfo) -> Any:
        # pydantic reads true as 1: `epochs: true` or `lr: yes` would train, silently, on 1
        if isinstance(value, bool) and info.field_name is not None:
            kinds = _kinds(cls.model_fields[info.field_name].annotation)
            if kinds & {int, float} and bool not in kinds:
                raise ValueError(f"{value!r} is a boolean (YAML reads true, yes and on so), not a "
                                 "number; give a number")
        return value


class DataConfig(_Section):
    """Where the series come from and how they are checked."""

    path: LocalPath | None = Field(
        None, description="CSV or Parquet file; null means the built-in synthetic demo series."
    )
    layout: Literal["wide", "long"] = Field(
        "wide",
        description="wide: a timestamp column plus one column per channel (like ETTh1). "
        "long: one row per (series id, timestamp) with value column(s); many series.",
    )
    timestamp_column: str = Field("date", description="Name of the timestamp column.")
    id_column: str = Field("series_id", description="Series id column (long layout only).")
    columns: list[str] | None = Field(
        None, min_length=1,
        description="Channels to model. wide: default all columns except the timestamp. "
        "long: default ['value'].",
    )
    freq: str | None = Field(
        None, description="Pandas frequency alias (e.g. 'h', '15min', 'D'); inferred if null."
    )
    missing: Literal["error", "interpolate", "ffill"] = Field(
        "error",
        description="What to do with missing values and gaps in the time index: stop with an "
        "error naming the first one (default), linearly interpolate, or carry forward.",
    )

    @field_validator("columns")
    @classmethod
    def _distinct_columns(cls, columns: list[str] | None) -> list[str] | None:
        if columns is not None:
            repeated = sorted({c for c in columns if columns.count(c) > 1})
            if repeated:
                raise ValueError(f"names {repeated} more than once; list each "
                                 "channel once")
        return columns


class SplitConfig(_Section):
    """Chronological train/validation/test split, applied to each series separately."""

    by: Literal["fractions", "rows", "dates"] = Field(
        "fractions", description="How train/val/test are given."
    )
    train: float | int | str = Field(
        0.7, description="fractions: share of rows; rows: row count; dates: end (exclusive)."
    )
    val: float | int | str = Field(
        0.1, description="fractions: share of rows; rows: row count; dates: end (exclusive)."
    )
    test: float | int | str | None = Field(
        0.2,
        description="fractions: share; rows: count; dates: end (exclusive). null: to the end.",
    )

    @field_validator("train", "val", mode="before")
    @classmethod
    def _not_null(cls, value: Any) -> Any:
        # pydantic's own error lists each branch of the union ("split.train.float: ...")
        if value is None:
            raise ValueError("is null; give a fraction, a row count or a date as split.by says "
                             "(only split.test may be null: to the end)")
        return value

    @model_validator(mode="after")
    def _check_kinds(self) -> SplitConfig:
        parts = {"train": self.train, "val": self.val, "test": self.test}
        if self.by == "fractions":
            for name, v in parts.items():
                if v is None:
                    continue
                if isinstance(v, str) or not 0 < float(v) < 1:
                    raise ValueError(f"split.{name} must be a fraction in (0, 1) when by=fractions")
            total = sum(float(v) for v in parts.values() if v is not None)
            if total > 1 + 1e-9:
                raise ValueError(f"split fractions add up to {total:g}; they must be at most 1")
        elif self.by == "rows":
            for name, v in parts.items():
                if v is None:
                    continue
                if isinstance(v, str | float) or int(v) <= 0:
                    raise ValueError(f"split.{name} must be a positive row count when by=rows")
        else:
            stamps = {}
            for name, v in parts.items():
                if v is None:
                    continue
                try:
                    stamps[name] = pd.Timestamp(str(v))
                except ValueError:
                    raise ValueError(
                        f"split.{name} = {v!r} is not a date; use e.g. '2017-06-01'"
                    ) from None
            ordered = [stamps[k] for k in ("train", "val", "test") if k in stamps]
            if ordered != sorted(ordered):
                raise ValueError("split dates must increase: train < val < test")
        return self


MAX_STEPS = 2**31 - 1


class WindowConfig(_Section):
    """Lookback/horizon windows over the scaled series."""

    # bounded so that a mistyped 10**20 is a config error, not an overflow deep in numpy
    lookback: int = Field(96, gt=0, le=MAX_STEPS, description="L: input steps the model sees.")
    horizon: int = Field(24, gt=0, le=MAX_STEPS, description="H: steps forecast ahead.")
    stride: int = Field(1, gt=0, le=MAX_STEPS,
                        description="Step between training windows (eval uses 1).")


class ModelConfig(_Section):
    """Encoder-only Transformer over patch tokens (see forecast/model.py)."""

    patch_len: int = Field(16, gt=0, description="Time steps per token; 1 = one token per step.")
    patch_stride: int = Field(8, gt=0, description="Steps between the starts of two patches.")
    pad_end: bool = Field(
        True, description="Repeat the last value patch_stride times to add one patch (PatchTST)."
    )
    d_model: int = Field(64, gt=0, le=4096, description="Token width.")
    n_heads: int = Field(4, gt=0, le=64, description="Attention heads; must divide d_model.")
    n_layers: int = Field(2, gt=0, le=64, description="Encoder blocks.")
    d_ff: int = Field(128, gt=0, le=16384, description="Feed-forward hidden width.")
    dropout: float = Field(0.1, ge=0, lt=1, description="Dropout in attention output and MLP.")
    head_dropout: float = Field(0.0, ge=0, lt=1, description="Dropout before the linear head.")
    positional: Literal["sinusoidal", "learned"] = Field(
        "sinusoidal", description="Positional encoding of the patch tokens."
    )
    norm: Literal["layer", "batch"] = Field(
        "layer", description="Normalisation in each block: LayerNorm or BatchNorm (PatchTST)."
    )
    norm_first: bool = Field(True, description="Pre-norm blocks (true) or post-norm (false).")
    channel_independent: bool = Field(
        True,
        description="true: one shared encoder over each channel separately (PatchTST). "
        "false: each token holds the patch of every channel (channel mixing).",
    )
    revin: bool = Field(True, description="Instance normalisation of each input window.")
    linear_skip: bool = Field(
        False,
        description="Add a linear map from each channel's normalised lookback to its horizon "
        "beside the Transformer's head, so the encoder learns what a linear forecast misses.",
    )
    skip_fit: Literal["gradient", "least_squares"] = Field(
        "gradient",
        description="How the linear skip is trained. gradient: with the rest of the model. "
        "least_squares: solved in closed form on the training windows before training, then "
        "frozen, with the head starting at zero, so the encoder learns what the linear forecast "
        "misses and validation can keep the linear forecast alone. Needs linear_skip.",
    )
    skip_huber_delta: float | None = Field(
        None,
        gt=0,
        allow_inf_nan=False,  # infinity would be the plain fit at four times its cost
        description="With skip_fit least_squares: fit the skip robustly, a row (one window of "
        "one channel) whose RMS residual exceeds this (scaled units) weighing delta / residual "
        "(Huber weights, iteratively reweighted least squares). null: plain least squares.",
    )
    skip_rank: int | None = Field(
        None,
        gt=0,
        description="With skip_fit least_squares: keep only this many principal directions of "
        "the skip's fitted training forecasts over the horizon (reduced-rank regression), so "
        "the horizon's steps share a few shapes instead of one free map each. Must be below "
        "windows.horizon. null: full rank.",
    )
    min_history: int | None = Field(
        None,
        description="Shortest history (steps) accepted at prediction time; shorter histories "
        "are left-padded and masked. Default: patch_len.",
    )

    @property
    def shortest_history(self) -> int:
        """min_history, or one patch when it is not set."""
        return self.min_history or self.patch_len

    @model_validator(mode="after")
    def _check_heads(self) -> ModelConfig:
        if self.skip_fit == "least_squares" and not self.linear_skip:
            raise ValueError(
                "model.skip_fit 'least_squares' fits the linear skip: set model.linear_skip to "
                "true, or model.skip_fit to 'gradient'"
            )
        for key, role in (("skip_huber_delta", "weights"), ("skip_rank", "reduces")):
            if getattr(self, key) is not None and self.skip_fit != "least_squares":
                raise ValueError(
                    f"model.{key} {role} the least-squares fit of the skip: set "
                    f"model.skip_fit to 'least_squares', or model.{key} to null"
                )
        if self.patch_stride > self.patch_len:
            # Steps between patches would belong to no token, and a short history could
            # fall entirely into such a gap.
            raise ValueError(
                f"model.patch_stride ({self.patch_stride}) must not exceed model.patch_len "
                f"({self.patch_len})"
            )
        if self.d_model % self.n_heads:
            raise ValueError(
                f"model.d_model ({self.d_model}) must be divisible by model.n_heads "
                f"({self.n_heads})"
            )
        return self


class TrainConfig(_Section):
    """Optimisation."""

    epochs: int = Field(20, gt=0, description="Maximum epochs.")
    batch_size: int = Field(128, gt=0, description="Windows per optimiser step.")
    lr: float = Field(1e-3, gt=0, allow_inf_nan=False, description="Peak learning rate (AdamW).")
    weight_decay: float = Field(1e-4, ge=0, description="AdamW weight decay.")
    schedule: Literal["cosine", "onecycle", "constant"] = Field(
        "cosine", description="Per-step schedule: linear warm-up then cosine, one-cycle, or flat."
    )
    warmup_frac: float = Field(0.05, ge=0, lt=1, description="Share of steps spent warming up.")
    grad_clip: float | None = Field(1.0, gt=0, description="Max gradient norm; null: no clip.")
    patience: int = Field(5, ge=0, description="Early stop after this many epochs without "
                          "a better validation loss; 0 disables early stopping.")
    loss: Literal["mse", "mae", "huber"] = Field("mse", description="Training loss.")
    huber_delta: float | None = Field(
        None, gt=0, allow_inf_nan=False, description="With loss huber: the error (scaled units) "
        "beyond which the loss grows linearly instead of quadratically. null: 1.0 (smooth L1).")
    val_metric: Literal["loss", "mse", "mae"] = Field(
        "loss",
        description="What scores each epoch on validation, for early stopping, the best-weights "
        "restore and tuning: the training loss, or MSE or MAE whatever the loss (a model trained "
        "on Huber but judged on MSE is then also chosen on MSE).",
    )
    max_windows_per_epoch: int | None = Field(
        None, gt=0, description="Sample at most this many training windows per epoch (the "
        "least-squares skip is still solved on every training window: one pass, no epochs)."
    )
    pad_augment: float = Field(
        0.0, ge=0, le=1, allow_inf_nan=False,
        description="Share of training windows whose history is randomly shortened (left-padded "
        "and masked), so that short histories forecast well at serving time. The least-squares "
        "skip (model.skip_fit) is solved on the same share of padded windows.",
    )
    seed: int = Field(0, ge=0, lt=2**32, description="Seed for weights, shuffling and dropout.")
    device: Literal["auto", "cpu", "cuda"] = Field(
        "auto", description="auto: CUDA when present (with bf16 autocast), else CPU."
    )
    num_threads: int | None = Field(
        None, gt=0, le=256, description="torch intra-op threads; default: the cores available."
    )
    checkpoint_dir: LocalPath | None = Field(
        None, description="Where epoch checkpoints go; default <output_dir>/<name>/checkpoints."
    )
    resume: bool = Field(True, description="Continue from a checkpoint found in checkpoint_dir.")
    progress: bool | None = Field(
        None, description="tqdm progress bar; null: shown only when stderr is a terminal."
    )

    @model_validator(mode="after")
    def _check_loss(self) -> TrainConfig:
        # a threshold for a loss that has none would be silently ignored
        if self.huber_delta is not None and self.loss != "huber":
            raise ValueError(
                f"train.huber_delta ({self.huber_delta:g}) is the Huber loss's threshold, but "
                f"train.loss is '{self.loss}': set train.loss to 'huber', or train.huber_delta "
                "to null"
            )
        return self


class EvalConfig(_Section):
    """Evaluation on the test split."""

    season: int | None = Field(
        None, gt=0, description="Season length for seasonal naive and MASE; default from freq."
    )
    linear_max_windows: int = Field(
        50_000, gt=0, description="Training windows per channel for the Ridge baseline."
    )
    batch_size: int = Field(512, gt=0, description="Windows per forward pass when scoring.")


class TrackingConfig(_Section):
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
    margin: float = Field(
        0.0, ge=0, lt=1,
        description="Relative improvement the challenger needs over the champion: 0.01 = 1%.",
    )
    timeout_seconds: float = Field(
        10.0, gt=0, allow_inf_nan=False,
        description="How long the pre-flight check waits for a tracking server."
    )


class PipelineConfig(_Section):
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


class Range(_Section):
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


def _default_space() -> dict[str, list[Any] | Range]:
    return {
        "train.lr": Range(low=1e-4, high=3e-3, log=True),
        "model.d_model": [16, 32, 64],
        "model.n_layers": [1, 2, 3],
        "model.dropout": Range(low=0.0, high=0.3),
    }


# train settings a sweep sets for every trial itself, or that change no score
UNSEARCHED = ("train.checkpoint_dir", "train.resume", "train.progress")


class TuneConfig(_Section):
    """Hyperparameter search (`forecast tune`), scored on the validation split only."""

    trials: int = Field(20, gt=0, description="Most trials to run.")
    timeout_minutes: float | None = Field(
        60.0, gt=0, description="Start no new trial after this many minutes; null: no limit."
    )
    sampler: Literal["tpe", "random", "grid"] = Field(
        "tpe", description="Optuna sampler; grid needs every entry of `space` to be a list."
    )
    metric: Literal["mse", "mae"] = Field("mse", description="Validation metric to minimise.")
    seed: int = Field(0, ge=0, lt=2**32, description="Sampler seed.")
    prune: bool = Field(True, description="Stop trials whose validation loss falls behind the "
                        "median of earlier trials at the same epoch.")
    space: dict[str, list[Any] | Range] = Field(
        default_factory=_default_space,
        description="Dotted config key → list of choices or {low, high, log} range.",
    )

    @field_validator("space", mode="before")
    @classmethod
    def _parse_space(cls, raw: Any) -> dict[str, list[Any] | Range]:
        # Parsed by hand: pydantic's union errors name both branches ("list[any]: Input
        # should be a valid list; function-after[...]") instead of the problem.
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
            if isinstance(choice, Range):
                space[key] = choice
            elif isinstance(choice, list):
                if not choice:
                    raise ValueError(f"{key}: give at least one choice")
                space[key] = choice
            elif isinstance(choice, dict):
                try:
                    space[key] = Range.model_validate(choice)
                except ValidationError as err:
                    raise ValueError(f"{key}: {_error_lines(err)}") from None
            else:
                raise ValueError(f"{key}: give a list of choices or {{low, high, log}}")
        if not space:  # every trial would train the same config
            raise ValueError("is empty: give at least one setting to search, e.g. "
                             "{train.lr: [0.0005, 0.001]}")
        return space

    @model_validator(mode="after")
    def _check_grid(self) -> TuneConfig:
        if self.sampler == "grid" and any(isinstance(v, Range) for v in self.space.values()):
            raise ValueError("tune.sampler 'grid' needs a list of choices for every key in "
                             "tune.space; replace the {low, high} ranges or use 'tpe'")
        return self


class Config(_Section):
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


def _error_lines(err: ValidationError) -> str:
    lines = []
    for e in err.errors():
        where = ".".join(str(p) for p in e["loc"])
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            msg = "unknown key; `forecast config` lists every key with its default"
        elif isinstance(e.get("input"), str | int | float) and e["type"] not in (
                "value_error", "int_from_float"):  # these say the value already
            value = e["input"]
            if isinstance(value, str) and len(value) > 64:
                value = value[:61] + "..."
            msg += f" (got {value!r})"
        # Cross-field checks have no single location; their message names the fields.
        lines.append(f"{where}: {msg}" if where else msg)
    return "; ".join(lines)


def _format_errors(err: ValidationError, source: str) -> str:
    return f"invalid configuration in {source}: {_error_lines(err)}"


class _YamlLoader(yaml.SafeLoader):
    """SafeLoader with the scalars a config needs: `1e-3` is a float (PyYAML's YAML 1.1 rules
    read it as text, so `split.val=5e-2` was rejected), and a date stays text (split dates are
    strings; a `datetime.date` fitted no field). A key given twice in one mapping is an error:
    YAML would keep the last silently, dropping what the first one set."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *base` merges; it is no key
                continue
            key = self.construct_object(key_node, deep=deep)
            try:
                hash(key)
            except TypeError:
                break  # the parent class refuses an unhashable key with its own message
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key {key!r} appears twice in one mapping; keep one",
                    key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


_YamlLoader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:timestamp"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_YamlLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$"),
    list("-+0123456789."),
)


def _yaml_load(text: str) -> Any:
    return yaml.load(text, Loader=_YamlLoader)  # noqa: S506 - a SafeLoader subclass


def _parse_override(item: str) -> tuple[list[str], Any]:
    key, sep, raw = item.partition("=")
    if not sep or not key:
        raise ConfigError(f"override {item!r} must look like section.key=value, e.g. train.lr=1e-3")
    # YAML parsing gives ints, floats, bools and null the same meaning as in the file.
    try:
        return key.strip().split("."), _yaml_load(raw)
    except yaml.YAMLError as err:
        problem = str(err).splitlines()[0]
        raise ConfigError(f"override {item!r}: the value is not valid YAML ({problem}); quote "
                          f"it to mean the text, e.g. --set \"{key}='{raw}'\"") from None


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Set dotted keys from the command line (`model.d_model=32`) into a raw config dict."""
    for item in overrides:
        path, value = _parse_override(item)
        set_dotted(raw, path, value, f"override {item!r}")
    return raw


def set_dotted(raw: dict[str, Any], path: list[str], value: Any, where: str) -> None:
    """raw[path[0]][path[1]]... = value, making sections on the way."""
    node = raw
    for part in path[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"{where}: {part!r} is not a section")
        node = child
    node[path[-1]] = value


def build_config(raw: dict[str, Any], source: str = "configuration") -> Config:
    try:
        return Config.model_validate(raw)
    except ValidationError as err:
        raise ConfigError(_format_errors(err, source)) from None


def load_config(path: str | Path | None, overrides: list[str] | None = None) -> Config:
    """Read a YAML config (or start from defaults), apply overrides, validate once."""
    raw: dict[str, Any] = {}
    source = "defaults"
    if path is not None:
        raw = _read_with_bases(Path(path), [])
        source = str(path)
    if overrides:  # a mistyped --set must not be blamed on the file alone
        source = f"{path} with the --set overrides" if path is not None else "the --set overrides"
    return build_config(apply_overrides(raw, overrides or []), source)


def _read_with_bases(p: Path, chain: list[Path]) -> dict[str, Any]:
    """The file's mapping merged over the file it names in `extends:` (relative to it)."""
    if not p.is_file():
        named = f" (extended by {str(chain[-1])!r})" if chain else ""
        raise ConfigError(f"config file {str(p)!r}{named} not found; pass an existing YAML file")
    if p.resolve() in chain:
        cycle = " -> ".join(str(c) for c in [*chain, p.resolve()])
        raise ConfigError(f"config files extend each other in a cycle: {cycle}; remove one "
                          "'extends:'")
    try:
        loaded = _yaml_load(p.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        one_line = " ".join(str(err).split())  # errors are one line on stderr
        raise ConfigError(f"config file {str(p)!r} is not valid YAML: {one_line}") from None
    except UnicodeDecodeError as err:
        raise ConfigError(f"config file {str(p)!r} is not UTF-8 text ({err.reason} at byte "
                          f"{err.start}); save it as UTF-8") from None
    if loaded is not None and not isinstance(loaded, dict):
        raise ConfigError(f"config file {str(p)!r} must hold a mapping of sections")
    raw = dict(loaded or {})
    base = raw.pop("extends", None)
    if base is None:
        return raw
    if not isinstance(base, str) or not base:
        raise ConfigError(f"extends in {str(p)!r} must be the path of another config file, "
                          "relative to this one")
    return _merged(_read_with_bases(p.parent / base, [*chain, p.resolve()]), raw)


def _merged(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in top.items():
        both_maps = isinstance(value, dict) and isinstance(out.get(key), dict)
        out[key] = _merged(out[key], value) if both_maps else value
    return out


def dump_config(config: Config) -> str:
    return yaml.safe_dump(config.to_dict(), sort_keys=False)


def integer_setting(key: str) -> bool:
    """Whether the dotted setting `key` (e.g. `model.d_model`) holds a whole number."""
    model: Any = Config
    *sections, last = key.split(".")
    for part in sections:
        model = model.model_fields[part].annotation
    kinds = _kinds(model.model_fields[last].annotation)
    return int in kinds and float not in kinds
