"""Closed-form least-squares fit of the model's linear skip on the training windows.

The skip maps each channel's normalised lookback to its horizon (RLinear). Under RevIN the
model forecasts (W h + b) * std + mean, with h = (x - mean) / std, so a squared loss on the
denormalised forecast is ordinary least squares of (y - mean) on the features [x - mean, std]:
windows count by their own scale, exactly as training weighs them.

With a Huber threshold the fit is robust instead: iteratively reweighted least squares in which
a row (one window of one channel) whose RMS residual exceeds the threshold weighs
threshold / residual, so a few windows the map cannot forecast (a sensor excursion) stop
dictating it.

With pad augmentation (train.pad_augment) the fit draws the same left padding the encoder
trains on: a seeded share of windows keeps only a random tail of its lookback, with RevIN
statistics over the real steps and the padded steps zeroed as the forward pass zeroes them. Fitted
on full windows only, the skip would forecast short histories from a lookback that is mostly
zeros.

With a rank r the solution is then projected onto the r principal directions of its fitted
training forecasts (reduced-rank regression): the H horizon steps share r shapes.

Per channel (model.skip_per_channel), every step is the same with a leading channel dimension:
each channel's rows make their own normal equations and their own solution.

Trained on several processes, each rank accumulates the normal equations of its share of the
windows and the sums are all-reduced: every rank then solves the whole training set's system,
the one a single process would, to float rounding.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

import torch

from forecast.distributed import SINGLE, Dist
from forecast.model import PatchTransformer
from forecast.windows import WindowSet, random_pad_mask

# Ridge strength per window, relative to the scaled data's unit variance: enough to keep the
# L x L system well conditioned when lookback steps are nearly collinear, too small to bias it.
RIDGE = 1e-3
# reweightings after the plain fit: at ETTh2 (delta 0.5) the linear forecast's validation MSE
# after 3 is within 0.07% of that after 6 (H=192 0.2637 against 0.2635, H=720 0.5974 against
# 0.5973; 0.2694 and 0.6022 with none)
IRLS_STEPS = 3

log = logging.getLogger(__name__)

Rows = Iterable[tuple[torch.Tensor, torch.Tensor]]
# a weight per least-squares row, from that batch's (features, targets)
RowWeight = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
# (F'F, F'T, total weight) of some rows, optionally weighted
Equations = Callable[[Rows, RowWeight | None],
                     tuple[torch.Tensor, torch.Tensor, torch.Tensor]]


def window_rows(x: torch.Tensor, y: torch.Tensor, mean: torch.Tensor, std: torch.Tensor,
                per_channel: bool = False, level: bool = False,
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """One least-squares row per window and channel: features [x - mean, std] [(B*C) x (L+1)]
    and targets y - mean [(B*C) x H], from x [B x L x C], y [B x H x C], mean/std [B x 1 x C].
    per_channel: each channel's rows apart, [C x B x (L+1)] and [C x B x H]. level: the mean
    as a feature too, before std ([x - mean, mean, std]): the skip's level input, mean / std,
    times the std the forecast is scaled by."""
    parts = [x - mean, mean, std] if level else [x - mean, std]
    features = torch.cat(parts, dim=1).permute(2, 0, 1)  # [C x B x P]
    targets = (y - mean).permute(2, 0, 1)  # [C x B x H]
    if per_channel:
        return features, targets
    # window-major rows, as the shared fit has always summed them
    return (features.transpose(0, 1).reshape(-1, features.shape[-1]),
            targets.transpose(0, 1).reshape(-1, y.shape[1]))


def normal_equations(
    rows: Rows, weight: RowWeight | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Accumulate F'F and F'T (float64) over batches of (features, targets), each row's squared
    error multiplied by `weight` if given; also the total weight (the row count unweighted).
    Rows may carry a leading channel dimension ([C x N x P]): then one system per channel."""
    gram = cross = count = None
    for features, targets in rows:
        features, targets = features.double(), targets.double()
        if weight is None:
            n = torch.full(features.shape[:-2], float(features.shape[-2]), dtype=torch.float64)
        else:
            w = weight(features, targets)  # one per row
            n = w.sum(-1)
            root = w.sqrt()[..., None]
            features, targets = features * root, targets * root
        f_t = features.transpose(-1, -2)
        if gram is None:
            gram, cross, count = f_t @ features, f_t @ targets, n
        else:
            gram += f_t @ features
            cross += f_t @ targets
            count += n
    if gram is None or cross is None or count is None:
        raise ValueError("no windows to fit the linear skip on")
    return gram, cross, count


def summed_over(dist: Dist) -> Equations:
    """`normal_equations` of this rank's rows summed over every rank's: the whole training
    set's system (the plain one without a process group)."""
    def equations(rows: Rows, weight: RowWeight | None = None
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        gram, cross, count = normal_equations(rows, weight)
        return dist.all_reduce_sum(gram), dist.all_reduce_sum(cross), dist.all_reduce_sum(count)
    return equations


def solve(gram: torch.Tensor, cross: torch.Tensor, count: torch.Tensor | float,
          ridge: float = RIDGE) -> torch.Tensor:
    """Ridge solution [P x H] (per channel: [C x P x H]); the last feature (the bias, scaled
    by std) is not shrunk."""
    scale = ridge * torch.as_tensor(count, dtype=gram.dtype)[..., None]  # [1] or [C x 1]
    penalty = scale * torch.ones(gram.shape[-1], dtype=gram.dtype)
    penalty[..., -1] = 0.0
    system = gram + torch.diag_embed(penalty)
    # A Gram matrix plus a ridge is symmetric positive definite: Cholesky. Batched LU
    # (torch.linalg.solve) of the per-channel systems returned invalid pivots on 2 threads
    # (MKL, torch 2.13: the demo with model.skip_per_channel); one system at a time it does not.
    factor, info = torch.linalg.cholesky_ex(system)
    if bool((info == 0).all()):
        return torch.cholesky_solve(cross, factor)
    P, H = cross.shape[-2:]  # not positive definite (a constant feature): LU, one at a time
    return torch.stack([torch.linalg.solve(a, b) for a, b in zip(
        system.reshape(-1, P, P), cross.reshape(-1, P, H), strict=True)]).reshape(cross.shape)


Solver = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def huber_solve(rows: Callable[[], Rows], delta: float, steps: int = IRLS_STEPS,
                plain: torch.Tensor | None = None, solver: Solver = solve,
                equations: Equations = normal_equations) -> torch.Tensor:
    """The `solver` solution (the ridge one by default) under Huber row weights
    min(1, delta / RMS residual), by iteratively reweighted least squares from the unweighted
    one (solved here unless given as `plain`); `rows` is read once per step and summed by
    `equations`."""
    solution = solver(*equations(rows(), None)) if plain is None else plain
    for _ in range(steps):
        def huber(features: torch.Tensor, targets: torch.Tensor,
                  fitted: torch.Tensor = solution) -> torch.Tensor:
            rms = ((features @ fitted - targets) ** 2).mean(-1).sqrt()
            return (delta / rms.clamp_min(1e-12)).clamp(max=1.0)
        solution = solver(*equations(rows(), huber))
    return solution


def reduce_rank(solution: torch.Tensor, gram: torch.Tensor, rank: int) -> torch.Tensor:
    """The solution [P x H] projected onto the top-`rank` eigenvectors of B' G B, the horizon
    cross-product of its fitted forecasts over the rows whose F'F is `gram`."""
    # eigh reads one triangle only, so rounding asymmetry in the product does not matter
    s_t = solution.transpose(-1, -2)
    basis = torch.linalg.eigh(s_t @ gram @ solution).eigenvectors[..., -rank:]
    return solution @ basis @ basis.transpose(-1, -2)


@torch.no_grad()
def fit_linear_skip(model: PatchTransformer, train: WindowSet, *, pad_augment: float = 0.0,
                    seed: int = 0, batch_size: int = 1024, dist: Dist = SINGLE) -> int:
    """Solve the skip in closed form (robustly with model.skip_huber_delta, reduced to
    model.skip_rank) and zero the head; returns windows used. `pad_augment` is the share of
    windows left-padded as in training, drawn from `seed`. With a process group (`dist`) each
    rank reads its share of the windows and all solve the summed system. Called before
    training: the fit
    assumes RevIN's affine is still the identity. (A model built with model.skip_fit
    'least_squares' has its skip frozen, so training leaves it as solved.)"""
    if model.skip is None:
        raise ValueError("the model has no linear skip (model.linear_skip is false)")
    if not 0.0 <= pad_augment <= 1.0:
        raise ValueError(f"pad_augment is a share of windows, between 0 and 1; got {pad_augment}")
    revin = model.revin
    if revin is not None and (revin.weight.ne(1).any() or revin.bias.any()):
        raise ValueError("RevIN's affine has moved from the identity: solve the skip before "
                         "training, on a newly built model")
    min_history = model.cfg.shortest_history
    per_channel = model.cfg.skip_per_channel
    equations = summed_over(dist)
    # minutes on a large set (36k windows x 21 channels, several passes when robust): say so
    passes = 1 + (IRLS_STEPS if model.cfg.skip_huber_delta is not None else 0)
    log.info("solving the linear skip by least squares: %d windows x %d channels, %d pass%s",
             len(train), train.n_channels, passes, "" if passes == 1 else "es (robust)")
    started, done = time.perf_counter(), [0]

    def rows() -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        yield from _rows()
        done[0] += 1
        log.info("linear skip: pass %d of %d read, %.1fs", done[0], passes,
                 time.perf_counter() - started)

    def _rows() -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        generator = torch.Generator().manual_seed(seed)  # the same padding on every pass
        batches = train.batches(batch_size, rank=dist.rank, world=dist.world)
        for lo, (x, y) in zip(range(0, len(train), batch_size), batches, strict=True):
            x, y = x.double(), y.double()  # [B x L x C], [B x H x C]
            # drawn for the whole batch, as one process draws it, then this rank's share
            pad = random_pad_mask(min(batch_size, len(train) - lo), x.shape[1], min_history,
                                  pad_augment, generator)
            if pad is not None and dist.world > 1:
                pad = pad[dist.rank::dist.world]
            valid = torch.ones_like(x[:, :, :1]) if pad is None else (~pad)[..., None].double()
            if model.revin is not None:  # the statistics the forward pass normalises with
                mean, std = model.revin.statistics(x, valid)
            else:
                mean, std = torch.zeros_like(x[:, :1]), torch.ones_like(x[:, :1])
            if pad is not None:  # x - mean is then 0 there, as the forward pass's zeroed steps
                x = torch.where(pad[..., None], mean, x)
            yield window_rows(x, y, mean, std, per_channel, model.cfg.skip_level)

    gram, cross, count = equations(rows(), None)
    solution = solve(gram, cross, count)  # [P x H], per channel [C x P x H]
    if model.cfg.skip_huber_delta is not None:
        solution = huber_solve(rows, model.cfg.skip_huber_delta, plain=solution,
                               equations=equations)
    if model.cfg.skip_rank is not None:
        solution = reduce_rank(solution, gram, model.cfg.skip_rank)
    # the skip's inputs are the lags (and the level); the std feature's row is its bias
    model.skip.weight.copy_(solution[..., :-1, :].transpose(-1, -2))
    model.skip.bias.copy_(solution[..., -1, :])
    torch.nn.init.zeros_(model.head.weight)
    torch.nn.init.zeros_(model.head.bias)
    return len(train)


@dataclass(frozen=True)
class SolvedSkip:
    """A solved skip and the validation loss of the skip alone (the model at "epoch 0")."""

    weight: torch.Tensor
    bias: torch.Tensor
    val_loss: float

    def apply(self, model: PatchTransformer) -> None:
        """Give a newly built model this skip and a zero head, as `fit_linear_skip` does."""
        with torch.no_grad():
            model.skip.weight.copy_(self.weight)
            model.skip.bias.copy_(self.bias)
            torch.nn.init.zeros_(model.head.weight)
            torch.nn.init.zeros_(model.head.bias)


@dataclass
class SkipSolutions:
    """Skips solved in this process, keyed by everything that determines them (the caller's
    key): a search's trials that share a lookback and the skip's settings differ only in the
    encoder, whose head starts at zero, so they reuse one solve (minutes on a large set) and
    its validation score instead of repeating both."""

    solved: dict[str, SolvedSkip] = field(default_factory=dict)

    def slot(self, key: str) -> SkipSlot:
        return SkipSlot(self, key)


@dataclass(frozen=True)
class SkipSlot:
    """One key's place in a SkipSolutions: what `fit` reads and fills."""

    store: SkipSolutions
    key: str

    def get(self) -> SolvedSkip | None:
        return self.store.solved.get(self.key)

    def put(self, model: PatchTransformer, val_loss: float) -> None:
        self.store.solved[self.key] = SolvedSkip(model.skip.weight.detach().cpu().clone(),
                                                 model.skip.bias.detach().cpu().clone(),
                                                 val_loss)
