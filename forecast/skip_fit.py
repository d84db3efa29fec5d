"""Closed-form least-squares fit of the model's linear skip on the training windows.

The skip maps each channel's normalised lookback to its horizon (RLinear). Under RevIN the
model forecasts (W h + b) * std + mean, with h = (x - mean) / std, so a squared loss on the
denormalised forecast is ordinary least squares of (y - mean) on the features [x - mean, std]:
windows count by their own scale, exactly as training weighs them.
"""

from __future__ import annotations

import torch

from forecast.model import PatchTransformer
from forecast.windows import WindowSet

# Ridge strength per window, relative to the scaled data's unit variance: enough to keep the
# L x L system well conditioned when lookback steps are nearly collinear, too small to bias it.
RIDGE = 1e-3


@torch.no_grad()
def fit_linear_skip(model: PatchTransformer, train: WindowSet, batch_size: int = 1024) -> int:
    """Solve the skip in closed form and zero the head; returns windows used. (A model built
    with model.skip_fit 'least_squares' has its skip frozen, so training leaves it as solved.)"""
    if model.skip is None:
        raise ValueError("the model has no linear skip (model.linear_skip is false)")
    L, H = model.lookback, model.horizon
    gram = torch.zeros(L + 1, L + 1, dtype=torch.float64)
    cross = torch.zeros(L + 1, H, dtype=torch.float64)
    rows = 0
    for x, y in train.batches(batch_size):
        x, y = x.double(), y.double()  # [B x L x C], [B x H x C]
        if model.revin is not None:  # the statistics the forward pass normalises with
            mean, std = model.revin.statistics(x, torch.ones_like(x[:, :, :1]))  # [B x 1 x C]
        else:
            mean, std = torch.zeros_like(x[:, :1]), torch.ones_like(x[:, :1])
        # one row per window and channel: [(B*C) x (L+1)] features, [(B*C) x H] targets
        features = torch.cat([x - mean, std], dim=1).transpose(1, 2).reshape(-1, L + 1)
        targets = (y - mean).transpose(1, 2).reshape(-1, H)
        gram += features.T @ features
        cross += features.T @ targets
        rows += len(features)
    penalty = torch.full((L + 1,), RIDGE * rows, dtype=torch.float64)
    penalty[L] = 0.0  # the bias is not shrunk
    solution = torch.linalg.solve(gram + torch.diag(penalty), cross)  # [(L+1) x H]
    model.skip.weight.copy_(solution[:L].T)
    model.skip.bias.copy_(solution[L])
    torch.nn.init.zeros_(model.head.weight)
    torch.nn.init.zeros_(model.head.bias)
    return rows // train.n_channels
