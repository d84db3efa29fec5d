"""Optimisation and evaluation settings."""

from __future__ import annotations

from typing import Literal

from pydantic import (
    Field,
    model_validator,
)

from forecast.config.fields import LocalPath, Section


class TrainConfig(Section):
    """Optimisation."""

    epochs: int = Field(12, gt=0, description="Maximum epochs.")
    batch_size: int = Field(128, gt=0, description="Windows per optimiser step.")
    lr: float = Field(1e-3, gt=0, allow_inf_nan=False, description="Peak learning rate (AdamW).")
    weight_decay: float = Field(1e-4, ge=0, description="AdamW weight decay.")
    schedule: Literal["cosine", "onecycle", "constant"] = Field(
        "cosine", description="Per-step schedule: linear warm-up then cosine, one-cycle, or flat."
    )
    warmup_frac: float = Field(0.05, ge=0, lt=1, description="Share of steps spent warming up.")
    grad_clip: float | None = Field(1.0, gt=0, description="Max gradient norm; null: no clip.")
    patience: int = Field(3, ge=0, description="Early stop after this many epochs without "
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


class EvalConfig(Section):
    """Evaluation on the test split."""

    season: int | None = Field(
        None, gt=0, description="Season length for seasonal naive and MASE; default from freq."
    )
    linear_max_windows: int = Field(
        50_000, gt=0, description="Training windows per channel for the Ridge baseline."
    )
    batch_size: int = Field(512, gt=0, description="Windows per forward pass when scoring.")
