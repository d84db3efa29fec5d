"""One rank's fit of a tiny config, run by torchrun from tests/test_distributed.py (with the
repository root on PYTHONPATH) and called in-process there for the single-process side."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import torch

from forecast.config import DataConfig, build_config
from forecast.data import frame_to_series
from forecast.distributed import process_group
from forecast.model import build_model
from forecast.train import fit
from forecast.windows import prepare
from tests.conftest import make_frame, tiny_raw

# the least-squares skip (robust, with padded windows) and pad augmentation are on, so that
# every part of fit that a rank shares is compared: 251 training windows, 128 per epoch
RAW = tiny_raw(
    model={"linear_skip": True, "skip_fit": "least_squares", "skip_huber_delta": 0.5},
    train={"epochs": 2, "pad_augment": 0.3, "max_windows_per_epoch": 128, "progress": False},
)


def snapshot(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def fit_tiny(batch_size: int, checkpoints: Path) -> dict[str, Any]:
    """Weights after the last epoch ("trained"; the best epoch's may be the untrained epoch 0)
    and kept ("state"), and per-epoch losses, after fitting RAW with `batch_size` windows per
    step (per rank, in a process group)."""
    raw = {**RAW, "train": {**RAW["train"], "batch_size": batch_size}}
    cfg = build_config(raw, "tiny distributed test")
    prepared = prepare(frame_to_series(make_frame(), DataConfig(), source="tiny"), cfg.split,
                       cfg.windows)
    torch.manual_seed(0)
    model = build_model(cfg.model, cfg.windows.lookback, cfg.windows.horizon,
                        prepared.n_channels)
    trained: dict[str, torch.Tensor] = {}
    result = fit(model, prepared, cfg.train, checkpoints, "tiny",
                 lambda stats: trained.update(snapshot(model)))
    return {"state": snapshot(model), "trained": trained,
            "history": [(h.train_loss, h.val_loss) for h in result.history],
            "linear_val_loss": result.linear_val_loss}


if __name__ == "__main__":
    out = Path(sys.argv[1])
    torch.set_num_threads(1)
    with process_group(torch.device("cpu")) as dist:
        torch.save(fit_tiny(int(sys.argv[2]), out / "checkpoints"), out / f"rank{dist.rank}.pt")
