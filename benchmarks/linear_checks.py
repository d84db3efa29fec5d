"""Validation checks of the least-squares linear skip alone (the shipped models' "epoch 0").

Every figure is the validation MSE (scaled values, all windows) of a linear forecast solved in
closed form on the training windows, as `forecast/skip_fit.py` solves the model's skip.
docs/design-notes.md quotes these figures for variants of the fit that are not shipped; the
test block is never read.

    python benchmarks/linear_checks.py --dataset ETTh1 --horizon 336 --check ridge
    python benchmarks/linear_checks.py --dataset ETTh2 --horizon 720 --check band
    python benchmarks/linear_checks.py --dataset ETTh1 --horizon 336 --check per-channel \\
        --train-rows 5760                       # fold 2: validate on rows 5760-8640
    python benchmarks/linear_checks.py --dataset ETTm2 --horizon 720 --check robust --level \
        --lookbacks 336 720 --deltas 0.5 0.1 0.05

Checks (each row against "shipped", the fit as the model does it: ridge 1e-3, one map shared
by all channels, rows weighted by their own scale, full-rank lookback; with --level the skip
also sees the window's level, as model.skip_level gives it):
  ridge         the ridge strength (--ridges)
  band          the lookback projected onto its K lowest Fourier frequencies (--bands)
  per-channel   a separate map per channel (--ridges)
  equal-weight  the loss on RevIN-normalised values, so every window counts equally (--ridges)
  lookbacks     the average of the forecasts fitted at each of --lookbacks, every combination
                (scored on the windows the longest lookback leaves)
  robust        Huber-weighted rows (model.skip_huber_delta): a row (one window of one channel)
                weighs min(1, delta / its RMS residual), by iteratively reweighted least
                squares (--deltas, scaled units)
  recency       rows weighted 0.5 ** (age / half-life), age in rows from the last training
                window (--half-lives)
  rank          reduced-rank regression: the solution projected onto the top-r principal
                directions of its fitted training forecasts (--ranks; ranks >= H are skipped);
                with --delta the base fit is the robust one (the "shipped" row stays plain)
  period        a period-structured map (SparseTSF's cross-period sharing): each block of
                --period output steps is one convolution of the lookback, the same for every
                phase, over lags within --offsets of a multiple of the period; with --delta
                both it and a full-rank comparison row are fitted robustly
Prints a table, then one JSON line: a list of {dataset, horizon, val_rows, check, lookback,
variant, val_mse}, saved to benchmarks/results/linear_checks.json (--results).
"""

from __future__ import annotations

import argparse
import functools
import itertools
import math
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from benchmarks import record  # noqa: E402
from benchmarks.ett import DATASETS, HORIZONS, SPLITS, config_for, require_data  # noqa: E402
from forecast.config import load_config  # noqa: E402
from forecast.errors import ForecastError  # noqa: E402
from forecast.model import RevIN  # noqa: E402
from forecast.runner import load_data  # noqa: E402
from forecast.skip_fit import (  # noqa: E402
    RIDGE,
    huber_solve,
    normal_equations,
    reduce_rank,
    solve,
    window_rows,
)
from forecast.windows import Prepared, WindowSet, prepare  # noqa: E402

CHECKS = ("ridge", "band", "per-channel", "equal-weight", "lookbacks", "robust", "recency",
          "rank", "period")
Batches = Callable[[], Iterator[tuple[torch.Tensor, torch.Tensor]]]


def prepared(dataset: str, horizon: int, lookback: int, train_rows: int,
             data_dir: Path) -> Prepared:
    """The shipped config's data and split, with the lookback and training rows given (the
    validation block is the config's validation rows after the training rows)."""
    cfg = load_config(config_for(dataset, horizon), [
        f"data.path={data_dir / (dataset + '.csv')}", f"windows.horizon={horizon}",
        f"windows.lookback={lookback}", f"split.train={train_rows}"])
    return prepare(load_data(cfg), cfg.split, cfg.windows)


def statistics(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The mean and std RevIN normalises each window with, [B x 1 x C]."""
    return RevIN(x.shape[2]).statistics(x, torch.ones_like(x[:, :, :1]))


def batches(windows: WindowSet, lookback: int, channel: int | None = None) -> Batches:
    """float64 (x, y) batches: the last `lookback` steps, optionally one channel only."""
    keep = slice(None) if channel is None else slice(channel, channel + 1)

    def each() -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for x, y in windows.batches(1024):
            yield x[:, -lookback:, keep].double(), y[:, :, keep].double()
    return each


def batch_rows(x: torch.Tensor, y: torch.Tensor, equal_weight: bool = False, level: bool = False
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Least-squares rows of one batch, with the mean and std that turn them back into values;
    `level`: the window's mean as a feature too (model.skip_level)."""
    mean, std = statistics(x)
    if equal_weight:  # [(x - mean) / std, 1] -> (y - mean) / std
        return *window_rows(x / std, y / std, mean / std, torch.ones_like(std),
                            level=level), mean, std
    return *window_rows(x, y, mean, std, level=level), mean, std


def rows(data: Batches, equal_weight: bool = False, level: bool = False
         ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    for x, y in data():
        yield batch_rows(x, y, equal_weight, level)[:2]


def recency_weights(n_rows: int, start: int, channels: int, n_windows: int,
                    half_life: float) -> torch.Tensor:
    """0.5 ** (age / half_life) for rows window-major from window `start`; windows come in time
    order, one row apart, so a window's age is its distance from the last one."""
    index = start + torch.arange(n_rows, dtype=torch.float64) // channels
    return 0.5 ** ((n_windows - 1 - index) / half_life)


def recency_fit(data: Batches, n_windows: int, channels: int, half_life: float,
                level: bool = False) -> torch.Tensor:
    seen = 0  # windows already weighted: the rows come in time order

    def recent(features: torch.Tensor, _targets: torch.Tensor) -> torch.Tensor:
        nonlocal seen
        w = recency_weights(len(features), seen, channels, n_windows, half_life)
        seen += len(features) // channels
        return w
    return solve(*normal_equations(rows(data, level=level), recent))


def forecasts(data: Batches, solution: torch.Tensor, equal_weight: bool = False,
              level: bool = False) -> torch.Tensor:
    """Forecasts [N x H x C] of the solved map on every window of `data`."""
    out = []
    for x, y in data():
        features, _, mean, std = batch_rows(x, y, equal_weight, level)
        pred = (features @ solution).reshape(len(x), x.shape[2], -1).transpose(1, 2)
        out.append(pred * std + mean if equal_weight else pred + mean)
    return torch.cat(out)


def targets(data: Batches) -> torch.Tensor:
    return torch.cat([y for _, y in data()])


def mse(pred: torch.Tensor, target: torch.Tensor) -> float:
    return float(((pred - target) ** 2).mean())


def fourier_basis(lookback: int, k: int) -> torch.Tensor:
    """Orthonormal basis [L x (2k-1)] of the k lowest frequencies (the constant included)."""
    t = torch.arange(lookback, dtype=torch.float64)
    columns = [torch.ones(lookback, dtype=torch.float64)]
    for f in range(1, k):
        columns += [torch.cos(2 * math.pi * f * t / lookback),
                    torch.sin(2 * math.pi * f * t / lookback)]
    return torch.linalg.qr(torch.stack(columns, 1))[0]


def band_limited(gram: torch.Tensor, cross: torch.Tensor, count: int, k: int) -> torch.Tensor:
    """The ridge solution with the lookback restricted to its k lowest frequencies, mapped back
    to the full [(L+1) x H] features (the bias column passes through)."""
    lookback = len(gram) - 1
    embed = torch.block_diag(fourier_basis(lookback, k), torch.ones(1, 1, dtype=torch.float64))
    return embed @ solve(embed.T @ gram @ embed, embed.T @ cross, count)


def period_lags(lookback: int, period: int, offset: int) -> torch.Tensor:
    """The lags u (from the lookback's end, shifted by the output's phase) a period-structured
    map may weigh: u = L + j - s for input step s and output phase j, within `offset` steps of
    a multiple of the period."""
    lags = torch.arange(1, lookback + period)
    phase = (lags + period // 2) % period - period // 2
    return lags[phase.abs() <= offset]


def period_solve(gram: torch.Tensor, cross: torch.Tensor, count: float, period: int,
                 offset: int, ridge: float = RIDGE) -> torch.Tensor:
    """The ridge solution [(L+1) x H] restricted to a period-structured map: output step
    t = period * k + j forecasts sum_u U[k, u] (x - mean)[L + j - u] over `period_lags`, the same
    weights for every phase j of block k (SparseTSF's cross-period map at offset 0; every lag,
    block-Toeplitz, at offset period // 2); the bias stays free per step. Solved from the full
    fit's normal equations: the map's columns are linear in U, so no data pass is needed. The
    ridge penalises each U[k, u] once per entry of the full map it stands for, as `solve`
    penalises those entries."""
    lookback, horizon = len(gram) - 1, cross.shape[1]
    blocks = horizon // period
    lags = period_lags(lookback, period, offset)
    n = len(lags)
    system = torch.zeros(n + period, n + period, dtype=gram.dtype)
    rhs = torch.zeros(n + period, blocks, dtype=gram.dtype)
    entries = torch.zeros(n, dtype=gram.dtype)
    by_phase = cross.reshape(lookback + 1, blocks, period)  # [s, k, j]
    placed = []
    for j in range(period):
        steps = lookback + j - lags
        inside = (steps >= 0) & (steps < lookback)
        which, steps = torch.nonzero(inside).squeeze(1), steps[inside]
        placed.append((which, steps))
        system[which[:, None], which[None, :]] += gram[steps[:, None], steps[None, :]]
        system[which, n + j] = gram[steps, lookback]
        system[n + j, which] = gram[lookback, steps]
        system[n + j, n + j] = gram[lookback, lookback]
        rhs[which] += by_phase[steps, :, j]
        rhs[n + j] = by_phase[lookback, :, j]
        entries[which] += 1
    system[:n, :n] += torch.diag(ridge * count * entries)
    weights = torch.linalg.solve(system, rhs)  # [(n + period) x blocks]
    full = torch.zeros(lookback + 1, blocks, period, dtype=gram.dtype)
    for j, (which, steps) in enumerate(placed):
        full[steps, :, j] = weights[which]
        full[lookback, :, j] = weights[n + j]
    return full.reshape(lookback + 1, horizon)


def run_check(check: str, args: argparse.Namespace) -> list[dict]:
    results = []
    # every fit and forecast below with the level input or without it, as --level says
    level_rows = functools.partial(rows, level=args.level)
    level_forecasts = functools.partial(forecasts, level=args.level)

    def record(lookback: int, variant: str, value: float) -> None:
        results.append({"check": check, "lookback": lookback, "variant": variant,
                        "val_mse": round(value, 4)})

    if check == "lookbacks":
        longest = max(args.lookbacks)
        data = prepared(args.dataset, args.horizon, longest, args.train_rows, args.data_dir)
        train, val = data.windows("train"), data.windows("val")
        preds = {L: level_forecasts(batches(val, L),
                                    solve(*normal_equations(level_rows(batches(train, L)))))
                 for L in args.lookbacks}
        target = targets(batches(val, longest))
        for r in range(1, len(args.lookbacks) + 1):
            for combo in itertools.combinations(args.lookbacks, r):
                average = sum(preds[L] for L in combo) / len(combo)
                record(longest, "+".join(map(str, combo)), mse(average, target))
        return results
    for lookback in args.lookbacks:
        data = prepared(args.dataset, args.horizon, lookback, args.train_rows, args.data_dir)
        train = batches(data.windows("train"), lookback)
        val = batches(data.windows("val"), lookback)
        target = targets(val)
        gram, cross, count = normal_equations(level_rows(train))
        plain = solve(gram, cross, count)
        record(lookback, "shipped", mse(level_forecasts(val, plain), target))
        robust = None  # --delta (rank and period checks only): their full-rank robust base
        if args.delta is not None:
            robust = huber_solve(functools.partial(level_rows, train), args.delta, plain=plain)
            record(lookback, f"Huber rows, delta {args.delta:g}",
                   mse(level_forecasts(val, robust), target))
        if check == "ridge":
            for ridge in (r for r in args.ridges if r != RIDGE):  # RIDGE is "shipped"
                record(lookback, f"ridge {ridge:g}",
                       mse(level_forecasts(val, solve(gram, cross, count, ridge)), target))
        elif check == "band":
            for k in args.bands:
                solution = band_limited(gram, cross, count, k)
                record(lookback, f"K={k}", mse(level_forecasts(val, solution), target))
        elif check == "equal-weight":
            equal = normal_equations(level_rows(train, equal_weight=True))
            for ridge in args.ridges:
                record(lookback, f"equal weight, ridge {ridge:g}",
                       mse(level_forecasts(val, solve(*equal, ridge), equal_weight=True), target))
        elif check == "per-channel":
            channels = range(data.n_channels)
            systems = [normal_equations(level_rows(batches(data.windows("train"), lookback, c)))
                       for c in channels]
            for ridge in args.ridges:
                per = [level_forecasts(batches(data.windows("val"), lookback, c),
                                 solve(*systems[c], ridge)) for c in channels]
                record(lookback, f"per channel, ridge {ridge:g}", mse(torch.cat(per, 2), target))
        elif check == "robust":
            for delta in args.deltas:
                solution = huber_solve(functools.partial(level_rows, train), delta, plain=plain)
                record(lookback, f"Huber rows, delta {delta:g}",
                       mse(level_forecasts(val, solution), target))
        elif check == "rank":
            base = plain if robust is None else robust
            for rank in (r for r in args.ranks if r < args.horizon):
                record(lookback, f"rank {rank}",
                       mse(level_forecasts(val, reduce_rank(base, gram, rank)), target))
        elif check == "period":
            fitted = "plain" if args.delta is None else f"Huber rows, delta {args.delta:g}"
            for offset in args.offsets:
                fit = functools.partial(period_solve, period=args.period, offset=offset)
                solution = fit(gram, cross, count)
                if args.delta is not None:
                    solution = huber_solve(functools.partial(level_rows, train), args.delta,
                                           plain=solution, solver=fit)
                record(lookback, f"period {args.period}, offset {offset}, {fitted}",
                       mse(level_forecasts(val, solution), target))
        elif check == "recency":
            n_windows = len(data.windows("train"))
            for half_life in args.half_lives:
                solution = recency_fit(train, n_windows, data.n_channels, half_life,
                                       args.level)
                record(lookback, f"half-life {half_life:g} rows",
                       mse(level_forecasts(val, solution), target))
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", choices=DATASETS, required=True)
    parser.add_argument("--horizon", type=int, choices=HORIZONS, required=True)
    parser.add_argument("--check", choices=CHECKS, required=True)
    parser.add_argument("--lookbacks", type=int, nargs="+", default=[336, 512, 720])
    parser.add_argument("--ridges", type=float, nargs="+",
                        default=[RIDGE, 1e-2, 1e-1, 1.0, 10.0, 30.0])
    parser.add_argument("--bands", type=int, nargs="+", default=[20, 60, 120],
                        help="K: frequencies kept (band check)")
    parser.add_argument("--deltas", type=float, nargs="+", default=[0.1, 0.5, 1.0, 2.0],
                        help="Huber thresholds on a row's RMS residual (robust check)")
    parser.add_argument("--half-lives", type=float, nargs="+", default=[1440, 2880, 5760],
                        help="rows after which a training window's weight halves (recency check)")
    parser.add_argument("--ranks", type=int, nargs="+", default=[8, 16, 32, 64, 128],
                        help="ranks kept (rank check)")
    parser.add_argument("--delta", type=float, default=None,
                        help="rank and period checks: start from (rank) or fit (period) the "
                             "robust fit at this Huber threshold")
    parser.add_argument("--period", type=int, default=24,
                        help="steps per period (period check; ETTh is hourly, so 24 is a day)")
    parser.add_argument("--offsets", type=int, nargs="+", default=[0, 1, 2, 4, 12],
                        help="lags kept within this many steps of a multiple of the period "
                             "(period check; period // 2 keeps every lag)")
    parser.add_argument("--train-rows", type=int, default=None,
                        help="training rows; validation is the protocol's validation rows "
                             "after them (default: the protocol's training rows; ETTh 5760: "
                             "fold 2)")
    parser.add_argument("--level", action="store_true",
                        help="the skip sees the window's level (model.skip_level, the default "
                             "model's skip)")
    parser.add_argument("--data-dir", type=Path, default=ROOT.parent / "shared" / "data")
    record.add_argument(parser, "linear_checks")
    args = parser.parse_args()
    run = record.start("linear_checks")
    if any(L <= 0 or L > 720 for L in args.lookbacks):
        parser.error("--lookbacks: each must be between 1 and 720 (the protocol's limit)")
    train_rows, val_rows, _ = SPLITS[args.dataset]
    folds = (train_rows, train_rows - val_rows)
    if args.train_rows is None:
        args.train_rows = train_rows
    if args.train_rows not in folds:
        parser.error(f"--train-rows: {folds[0]} (the benchmark's validation block) or "
                     f"{folds[1]} (fold 2) for {args.dataset}")
    if args.level and args.check in ("band", "period"):
        parser.error(f"--level: the {args.check} check maps the lookback alone; run it without "
                     "--level")
    if args.check == "band" and any(k < 1 or 2 * k - 1 > min(args.lookbacks) for k in args.bands):
        parser.error("--bands: each K must be at least 1 and leave 2K-1 <= the lookback")
    if any(not math.isfinite(r) or r < 0 for r in args.ridges):
        parser.error("--ridges: each must be a finite number >= 0 (the shipped fit uses 1e-3)")
    if any(not math.isfinite(d) or d <= 0 for d in args.deltas):
        parser.error("--deltas: each must be a finite number > 0")
    if any(r < 1 for r in args.ranks):
        parser.error("--ranks: each must be an integer >= 1")
    if args.delta is not None and (not math.isfinite(args.delta) or args.delta <= 0):
        parser.error("--delta: must be a finite number > 0")
    if args.delta is not None and args.check not in ("rank", "period"):
        parser.error("--delta: only the rank and period checks take it (the robust check "
                     "takes --deltas)")
    if args.check == "period":
        if args.period < 1 or args.horizon % args.period:
            parser.error(f"--period: must be at least 1 and divide the horizon ({args.horizon})")
        if any(d < 0 or d > args.period // 2 for d in args.offsets):
            parser.error(f"--offsets: each must be between 0 and period // 2 "
                         f"({args.period // 2})")
    if args.check == "rank" and all(r >= args.horizon for r in args.ranks):
        parser.error(f"--ranks: none is below the horizon ({args.horizon}); at full rank the "
                     "fit is the \"shipped\" row")
    if any(not math.isfinite(h) or h <= 0 for h in args.half_lives):
        parser.error("--half-lives: each must be a finite number of rows > 0")
    require_data(args.data_dir, [args.dataset])
    torch.set_num_threads(1)
    try:
        results = run_check(args.check, args)
    except ForecastError as exc:  # a malformed data file: its message names it and the fix
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(exc.exit_code) from None
    val_rows = f"{args.train_rows}-{args.train_rows + SPLITS[args.dataset][1]}"
    level = ", skip with level" if args.level else ""
    print(f"{args.dataset} H={args.horizon}, validation rows {val_rows}, check {args.check}{level}")
    print(f"{'L':>5}  {'variant':<32} {'val MSE':>8}")
    for r in results:
        print(f"{r['lookback']:>5}  {r['variant']:<32} {r['val_mse']:>8.4f}")
    record.finish(run, [{"dataset": args.dataset, "horizon": args.horizon, "val_rows": val_rows,
                         "level": args.level, **r} for r in results], args.results)


if __name__ == "__main__":
    main()
