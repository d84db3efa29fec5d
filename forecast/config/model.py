"""The Transformer's shape: patches, width, depth, normalisation and the linear skip."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import (
    Field,
    model_validator,
)

from forecast.config.fields import Section

# what the skip's own settings become when a config turns the skip off and leaves them out
SKIP_OFF: dict[str, Any] = {"skip_fit": "gradient", "skip_level": False,
                            "skip_huber_delta": None}


class ModelConfig(Section):
    """Encoder-only Transformer over patch tokens (see forecast/model.py)."""

    patch_len: int = Field(16, gt=0, description="Time steps per token; 1 = one token per step.")
    patch_stride: int = Field(8, gt=0, description="Steps between the starts of two patches.")
    pad_end: bool = Field(
        True, description="Repeat the last value patch_stride times to add one patch (PatchTST)."
    )
    d_model: int = Field(16, gt=0, le=4096, description="Token width.")
    n_heads: int = Field(4, gt=0, le=64, description="Attention heads; must divide d_model.")
    n_layers: int = Field(3, gt=0, le=64, description="Encoder blocks.")
    d_ff: int = Field(128, gt=0, le=16384, description="Feed-forward hidden width.")
    dropout: float = Field(0.3, ge=0, lt=1, description="Dropout in attention output and MLP.")
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
        True,
        description="Add a linear map from each channel's normalised lookback to its horizon "
        "beside the Transformer's head, so the encoder learns what a linear forecast misses.",
    )
    skip_per_channel: bool = Field(
        False,
        description="One linear skip per channel instead of one shared by all channels: for "
        "channels whose dynamics differ (the per-channel Ridge baseline's advantage there). "
        "Needs linear_skip.",
    )
    skip_level: bool = Field(
        True,
        description="Give the linear skip the window's level (its RevIN mean) as one more input, "
        "so the forecast can revert towards the series' overall level instead of carrying the "
        "window's own level forward (what the Ridge baseline, fitted on unnormalised windows, "
        "can do). Needs linear_skip and revin.",
    )
    skip_fit: Literal["gradient", "least_squares"] = Field(
        "least_squares",
        description="How the linear skip is trained. gradient: with the rest of the model. "
        "least_squares: solved in closed form on the training windows before training, then "
        "frozen, with the head starting at zero, so the encoder learns what the linear forecast "
        "misses and validation can keep the linear forecast alone. Needs linear_skip.",
    )
    skip_huber_delta: float | None = Field(
        0.1,
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

    @model_validator(mode="before")
    @classmethod
    def _skip_settings_follow_the_skip(cls, data: Any) -> Any:
        # The defaults solve the skip robustly by least squares with the level input: a config
        # that turns the skip, its closed-form fit or RevIN off means the settings that depend
        # on them too, unless it gives them itself (then the checks below name the conflict)
        if not isinstance(data, dict):
            return data
        data = dict(data)
        if data.get("linear_skip") is False:
            for key, off in SKIP_OFF.items():
                data.setdefault(key, off)
        if data.get("skip_fit") == "gradient":
            data.setdefault("skip_huber_delta", None)
        if data.get("revin") is False:
            data.setdefault("skip_level", False)
        return data

    @model_validator(mode="after")
    def _check_heads(self) -> ModelConfig:
        if self.skip_fit == "least_squares" and not self.linear_skip:
            raise ValueError(
                "model.skip_fit 'least_squares' fits the linear skip: set model.linear_skip to "
                "true, or model.skip_fit to 'gradient'"
            )
        if self.skip_level and not (self.linear_skip and self.revin):
            raise ValueError("model.skip_level feeds the RevIN level to the skip: set "
                             "model.linear_skip and model.revin to true, or model.skip_level "
                             "to false")
        if self.skip_per_channel and not self.linear_skip:
            raise ValueError("model.skip_per_channel needs the skip: set model.linear_skip to "
                             "true, or model.skip_per_channel to false")
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
