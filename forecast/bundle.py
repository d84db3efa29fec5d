"""A trained model on disk, pickle-free: safetensors weights plus JSON for config and scaler.

    model_dir/
      weights.safetensors   state_dict tensors
      model.json            lookback, horizon, channels, frequency, model config, metrics
      scaler.json           per-channel mean and scale of the training rows
      calibration.safetensors   the intervals' score quantiles (forecast/intervals.py)
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
from safetensors import SafetensorError
from safetensors.torch import load_file, save

from forecast.config import ModelConfig
from forecast.errors import ForecastError, first_line
from forecast.intervals import Calibration, load_calibration, save_calibration
from forecast.model import PatchTransformer, build_model

FORMAT_VERSION = 1
WEIGHTS, META, SCALER = "weights.safetensors", "model.json", "scaler.json"


@dataclass
class BundleMeta:
    name: str
    lookback: int
    horizon: int
    channels: list[str]
    freq: str
    model: dict[str, Any]
    timestamp_column: str = "date"
    id_column: str = "series_id"
    season: int = 1
    metrics: dict[str, float] = field(default_factory=dict)
    format_version: int = FORMAT_VERSION

    @cached_property  # read per series by the forecast checks: validate once
    def model_config(self) -> ModelConfig:
        return ModelConfig.model_validate(self.model)

    @property
    def min_history(self) -> int:
        return self.model_config.shortest_history


@dataclass
class Bundle:
    model: PatchTransformer
    mean: np.ndarray  # [C]
    scale: np.ndarray  # [C]
    meta: BundleMeta
    calibration: Calibration | None = None  # None: a model saved without intervals


def save_bundle(directory: str | Path, bundle: Bundle) -> Path:
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in bundle.model.state_dict().items()}
    # safetensors' save_file writes mode 0600; bytes written here follow the umask like the JSON
    (d / WEIGHTS).write_bytes(save(state))
    (d / META).write_text(json.dumps(asdict(bundle.meta), indent=2))
    (d / SCALER).write_text(json.dumps(
        {"mean": bundle.mean.tolist(), "scale": bundle.scale.tolist()}, indent=2))
    if bundle.calibration is not None:
        save_calibration(d, bundle.calibration)
    return d


def load_bundle(directory: str | Path) -> Bundle:
    d = Path(directory)
    missing = [f for f in (WEIGHTS, META, SCALER) if not (d / f).is_file()]
    if missing:
        raise ForecastError(f"{str(d)!r} is not a model directory: {missing} missing; "
                            "pass the model/ folder that `forecast train` wrote")

    def damaged(what: str, err: Exception) -> ForecastError:
        return ForecastError(f"model directory {str(d)!r} is damaged: {what} "
                             f"({first_line(err)[:300]}); "
                             "re-save the model with `forecast train`")

    try:
        raw = json.loads((d / META).read_text(encoding="utf-8"))
        if not isinstance(raw, dict):
            raise ValueError("not a JSON object")
    except (ValueError, UnicodeDecodeError) as err:
        raise damaged(f"{META} is not a JSON object", err) from None
    if raw.get("format_version") != FORMAT_VERSION:
        raise ForecastError(f"{str(d)!r} has model format {raw.get('format_version')}, this "
                            f"version reads {FORMAT_VERSION}; retrain or use a matching release")
    try:
        meta = BundleMeta(**raw)
        if not (_positive_int(meta.lookback) and _positive_int(meta.horizon)
                and isinstance(meta.channels, list) and meta.channels
                and all(isinstance(c, str) for c in meta.channels)):
            raise ValueError("lookback and horizon must be positive whole numbers, channels a "
                             "list of names")
        model = build_model(meta.model_config, meta.lookback, meta.horizon, len(meta.channels))
    except (TypeError, ValueError) as err:  # pydantic's ValidationError is a ValueError
        raise damaged(f"{META} does not describe a model", err) from None
    mean, scale = _read_scaler(d / SCALER, len(meta.channels))
    try:
        model.load_state_dict(load_file(str(d / WEIGHTS)))
    except (SafetensorError, RuntimeError, OSError) as err:  # truncated, or another model's
        raise damaged(f"{WEIGHTS} does not hold this model's weights", err) from None
    model.eval()
    calibration = load_calibration(d, meta.horizon, len(meta.channels))
    return Bundle(model, mean, scale, meta, calibration)


def _positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def _read_scaler(path: Path, n_channels: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and scale; a damaged file would otherwise give silent inf forecasts."""
    fix = (f"{str(path)!r} must hold \"mean\" and \"scale\", each a list of {n_channels} "
           "finite numbers (one per channel) with every scale > 0; the file is damaged: "
           "re-save the model with `forecast train`")
    try:
        raw = json.loads(path.read_text())
        mean = np.asarray(raw["mean"], dtype=np.float64)
        scale = np.asarray(raw["scale"], dtype=np.float64)
    except (ValueError, TypeError, KeyError):
        raise ForecastError(fix) from None
    shape_ok = mean.shape == scale.shape == (n_channels,)
    if not (shape_ok and np.isfinite(mean).all() and np.isfinite(scale).all()
            and (scale > 0).all()):
        raise ForecastError(fix)
    return mean, scale
