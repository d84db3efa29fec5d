"""Prediction intervals: calibration on the test block, and the choice of method on validation.

For each cell (ETTh1 and ETTh2 at H=96 and H=336 with the shipped configs, and the demo) one
model is trained (seed 0) exactly as `forecast train` trains it, and the script reports:

- the test block, every window: 80% and 95% coverage of the shipped split-conformal intervals,
  overall and the worst horizon step's distance from nominal; the weighted quantile loss (WQL)
  of the model and of the linear and seasonal-naive baselines, each with split-conformal
  intervals of their own; the point MSE;
- the method comparison, on validation only: the validation windows are cut in two in time;
  every method may use the first half (calibration), and is scored on the second:
  (a) split-conformal scores per step and channel, as shipped;
  (b) a multi-quantile head (levels 0.025, 0.1 ... 0.9, 0.975) on the frozen encoder's tokens,
      trained with pinball loss on the training windows, quantiles sorted so none cross;
  (c) (b) conformalised: each level's output shifted by the conformal quantile of its own
      errors on the calibration half, per step and channel.

None of the methods changes the point forecast: (a) and (c) move only the quantiles, and (b)'s
head is trained on the frozen model.

    python benchmarks/intervals.py --jobs 2
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import record  # noqa: E402
from benchmarks.ett import available_cores, config_for, jobs_count, require_data  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
CELLS = (("ETTh1", 96), ("ETTh1", 336), ("ETTh2", 96), ("ETTh2", 336), ("demo", 24))
LEVELS = (0.025, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.975)
WQL = LEVELS[1:-1]
HEAD_WINDOWS = 4000  # training windows the quantile head learns from (features are cached)
HEAD_EPOCHS = 30


def quantile_scores(quantiles: torch.Tensor, y: torch.Tensor, mean: np.ndarray,
                    scale: np.ndarray) -> dict[str, float]:
    """Coverage of the 80% and 95% intervals and WQL over 0.1 ... 0.9 (the data's units) of
    quantiles [B x H x C x len(LEVELS)] against actuals [B x H x C] (scaled units)."""
    at = {q: quantiles[..., i] for i, q in enumerate(LEVELS)}
    out = {}
    for name, (lo, hi) in {"coverage_80": (0.1, 0.9), "coverage_95": (0.025, 0.975)}.items():
        out[name] = float(((y >= at[lo]) & (y <= at[hi])).double().mean())
    sd, mu = torch.from_numpy(scale).float(), torch.from_numpy(mean).float()
    actual = y * sd + mu
    losses = []
    for q in WQL:
        miss = actual - (at[q] * sd + mu)
        losses.append(2 * float(torch.maximum(q * miss, (q - 1) * miss).sum())
                      / float(actual.abs().sum()))
    out["wql"] = float(np.mean(losses))
    return out


SCALINGS = {
    "mean_abs_diff": lambda x: (x[:, 1:] - x[:, :-1]).abs().mean(dim=1),
    "last_24_spread": lambda x: x[:, -24:].std(dim=1, unbiased=False),
    "nothing": lambda x: torch.ones_like(x[:, 0]),
}


@torch.inference_mode()
def scaled_conformal(model: nn.Module, calib, score, scaling) -> torch.Tensor:  # noqa: ANN001
    """(a)'s quantiles [B x H x C x Q] on `score` with errors divided by `scaling(x)` [B x C]
    instead of the lookback's standard deviation."""
    from forecast.intervals import MIN_SPREAD, conformal_ranks

    def scaled(x: torch.Tensor) -> torch.Tensor:
        return scaling(x).clamp_min(MIN_SPREAD)[:, None, :]

    errors = torch.cat([(y - model(x)) / scaled(x) for x, y in calib.batches(512)])
    ordered = errors.sort(dim=0).values
    n = len(ordered)
    ranks = np.clip(conformal_ranks(n, np.array(LEVELS)), 1, n)
    offsets = ordered[torch.from_numpy(ranks - 1)].permute(1, 2, 0)  # [H x C x Q]
    return torch.cat([model(x)[..., None] + scaled(x)[..., None] * offsets
                      for x, _ in score.batches(512)])


class TokenFeatures:
    """The frozen model's last encoder tokens, flattened per channel: [B x C x N*d]."""

    def __init__(self, model: nn.Module) -> None:
        if not model.cfg.channel_independent:
            raise SystemExit("the quantile head is written for channel-independent models")
        self.model = model.eval()
        self.seen: list[torch.Tensor] = []
        model.final_norm.register_forward_hook(lambda _m, _i, out: self.seen.append(out))

    @torch.inference_mode()
    def __call__(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Point forecasts [B x H x C] and token features [B x C x F] of windows x."""
        self.seen.clear()
        pred = self.model(x)
        z = self.seen[-1]  # [(B*C) x N x d]
        return pred, z.reshape(x.shape[0], x.shape[2], -1).clone()


class QuantileHead(nn.Module):
    """Token features → offsets from the point forecast, in units of the lookback's spread."""

    def __init__(self, features: int, horizon: int) -> None:
        super().__init__()
        self.horizon = horizon
        self.linear = nn.Linear(features, horizon * len(LEVELS))
        nn.init.zeros_(self.linear.weight)
        with torch.no_grad():  # start from a normal's quantiles around the point
            normal = torch.distributions.Normal(0.0, 1.0).icdf(torch.tensor(LEVELS))
            self.linear.bias.copy_(normal.repeat(horizon))

    def forward(self, feats: torch.Tensor, pred: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        """[B x C x F], [B x H x C], spread [B x C] → sorted quantiles [B x H x C x Q]."""
        B, C, _ = feats.shape
        offsets = self.linear(feats).view(B, C, self.horizon, len(LEVELS)).transpose(1, 2)
        return (pred[..., None] + s[:, None, :, None] * offsets).sort(dim=-1).values


def pinball(quantiles: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    q = torch.tensor(LEVELS)
    miss = y[..., None] - quantiles
    return torch.maximum(q * miss, (q - 1) * miss).mean()


def train_head(features: TokenFeatures, windows, seed: int) -> QuantileHead:  # noqa: ANN001
    from forecast.intervals import spread

    gen = torch.Generator().manual_seed(seed)
    k = torch.randperm(len(windows), generator=gen)[:HEAD_WINDOWS].sort().values
    cached = []
    for lo in range(0, len(k), 256):
        x, y = windows.gather(k[lo:lo + 256])
        pred, feats = features(x)
        cached.append((feats, pred, spread(x), y))
    feats, pred, s, y = (torch.cat(t) for t in zip(*cached, strict=True))
    head = QuantileHead(feats.shape[2], pred.shape[1])
    opt = torch.optim.Adam(head.parameters(), lr=1e-3)
    for _ in range(HEAD_EPOCHS):
        order = torch.randperm(len(y), generator=gen)
        for lo in range(0, len(y), 128):
            i = order[lo:lo + 128]
            loss = pinball(head(feats[i], pred[i], s[i]), y[i])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return head.eval()


@torch.inference_mode()
def method_comparison(outcome, seed: int) -> dict[str, dict[str, float]]:  # noqa: ANN001
    """(a), (b) and (c) calibrated on validation's first half, scored on its second."""
    from forecast.intervals import GRID, calibrate, spread
    from forecast.windows import WindowIndex, WindowSet

    prepared = outcome.prepared
    val = prepared.windows("val")
    index = val.index

    def half(first: bool) -> WindowSet:
        firsts, counts = [], []
        for start, n in zip(index.first_input.tolist(), index.counts.tolist(), strict=True):
            a = n // 2
            firsts.append(start if first else start + a)
            counts.append(a if first else n - a)
        return WindowSet(prepared.data, WindowIndex(np.array(firsts), np.array(counts), 1,
                                                    index.series.numpy()),
                         prepared.lookback, prepared.horizon)

    calib, score = half(True), half(False)
    features = TokenFeatures(outcome.model)
    with torch.inference_mode(False):
        head = train_head(features, prepared.windows("train"), seed)
    mean, scale = prepared.scaler.mean, prepared.scaler.scale

    def head_quantiles(windows: WindowSet) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        qs, ys, ss = [], [], []
        for x, y in windows.batches(512):
            pred, feats = features(x)
            qs.append(head(feats, pred, spread(x)))
            ys.append(y)
            ss.append(spread(x))
        return torch.cat(qs), torch.cat(ys), torch.cat(ss)

    # (a): the shipped calibration, made on the first half only
    cal = calibrate(outcome.model, calib)
    q_scores = torch.from_numpy(cal.score_quantiles(LEVELS)).float()  # [Q x H x C]
    qa, ys = [], []
    for x, y in score.batches(512):
        pred = outcome.model(x)
        qa.append(pred[..., None] + spread(x)[:, None, :, None] * q_scores.permute(1, 2, 0))
        ys.append(y)
    y_score = torch.cat(ys)
    out = {"a_split_conformal": quantile_scores(torch.cat(qa), y_score, mean, scale)}
    # (a) with the errors divided by other scales of the lookback than its spread
    for name, scaling in SCALINGS.items():
        out[f"a_scaled_by_{name}"] = quantile_scores(
            scaled_conformal(outcome.model, calib, score, scaling), y_score, mean, scale)
    # (b): the head as trained
    qb, y_b, s_b = head_quantiles(score)
    out["b_quantile_head"] = quantile_scores(qb, y_b, mean, scale)
    # (c): each level shifted by its conformal quantile on the calibration half
    qc_cal, y_cal, s_cal = head_quantiles(calib)
    errors = ((y_cal[..., None] - qc_cal) / s_cal[:, None, :, None]).sort(dim=0).values
    n = len(errors)
    shift = []
    for i, q in enumerate(LEVELS):
        rank = int(np.ceil((n + 1) * q - 1e-9)) if q >= 0.5 else int(np.floor((n + 1) * q + 1e-9))
        shift.append(errors[min(max(rank, 1), n) - 1, :, :, i])  # [H x C]
    shift = torch.stack(shift, dim=-1)  # [H x C x Q]
    qc = (qb + s_b[:, None, :, None] * shift).sort(dim=-1).values
    out["c_conformal_head"] = quantile_scores(qc, y_b, mean, scale)
    out["windows"] = {"calibration": len(calib), "scored": len(score),
                      "grid_levels": len(GRID)}
    return out


def run_cell(dataset: str, horizon: int, data_dir: Path, out_dir: Path, threads: int,
             extra: list[str]) -> dict:
    from forecast.config import load_config
    from forecast.runner import train_and_evaluate

    overrides = [f"windows.horizon={horizon}", "train.seed=0", f"output_dir={out_dir}",
                 f"name=intervals_{dataset.lower()}_h{horizon}", "train.progress=false",
                 "train.resume=false", f"train.num_threads={threads}"]
    if dataset == "demo":
        path = ROOT / "pipelines" / "configs" / "demo.yaml"
    else:
        path = config_for(dataset, horizon)
        overrides.append(f"data.path={data_dir / (dataset + '.csv')}")
    torch.set_num_threads(threads)
    t0 = time.perf_counter()
    outcome = train_and_evaluate(load_config(path, overrides + extra))
    wall = time.perf_counter() - t0
    iv, steps = outcome.intervals, outcome.intervals_per_step
    test = {
        "mse": outcome.evaluation.model.mse, "windows": outcome.evaluation.model.windows,
        "calibration_windows": outcome.calibration.windows,
        **{k: iv.get(k) for k in ("coverage_80", "coverage_95", "interval_width_80",
                                  "interval_width_95", "wql", "msis_95", "linear_wql",
                                  "seasonal_naive_wql", "linear_coverage_80",
                                  "seasonal_naive_coverage_80")},
    }
    for nominal in (80, 95):
        cov = steps[f"coverage_{nominal}"]
        worst = int(np.argmax(np.abs(cov - nominal / 100)))
        test[f"worst_step_{nominal}"] = worst + 1
        test[f"worst_step_coverage_{nominal}"] = float(cov[worst])
    t1 = time.perf_counter()
    methods = method_comparison(outcome, seed=0)
    return {"dataset": dataset, "horizon": horizon, "lookback": outcome.prepared.lookback,
            "seed": 0, "config": str(path.relative_to(ROOT)), "test": test,
            "validation_methods": methods, "train_seconds": round(outcome.fit.seconds, 1),
            "wall_seconds": round(wall, 1),
            "method_seconds": round(time.perf_counter() - t1, 1)}


def spawn(dataset: str, horizon: int, args: argparse.Namespace) -> dict:
    cmd = [sys.executable, __file__, "--cell", dataset, str(horizon), "--data-dir",
           str(args.data_dir), "--output-dir", str(args.output_dir), "--threads",
           str(max(1, available_cores() // args.jobs))]
    for item in args.set:
        cmd += ["--set", item]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode:
        sys.stderr.write(proc.stderr[-5000:])
        raise SystemExit(f"cell {dataset} H={horizon} failed ({proc.returncode})")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def within(value: float, nominal: float, points: float) -> str:
    return "yes" if abs(value - nominal) <= points / 100 else "NO"


def table(cells: list[dict]) -> str:
    lines = ["test block, every window (shipped split-conformal intervals, seed 0)",
             f"{'cell':<12}{'MSE':>8}{'cov80':>8}{'cov95':>8}{'worst80':>9}{'worst95':>9}"
             f"{'WQL':>8}{'linear':>8}{'s.naive':>8}  ±3 / ±6 / beats both"]
    for c in cells:
        t = c["test"]
        cell = f"{c['dataset']} H{c['horizon']}"
        ok3 = within(t["coverage_80"], 0.8, 3) == within(t["coverage_95"], 0.95, 3) == "yes"
        ok6 = within(t["worst_step_coverage_80"], 0.8, 6) == \
            within(t["worst_step_coverage_95"], 0.95, 6) == "yes"
        beats = t["wql"] < min(v for v in (t["linear_wql"], t["seasonal_naive_wql"])
                               if v is not None)
        lines.append(f"{cell:<12}{t['mse']:>8.4f}{t['coverage_80']:>8.3f}"
                     f"{t['coverage_95']:>8.3f}{t['worst_step_coverage_80']:>9.3f}"
                     f"{t['worst_step_coverage_95']:>9.3f}{t['wql']:>8.4f}"
                     f"{t['linear_wql']:>8.4f}{(t['seasonal_naive_wql'] or float('nan')):>8.4f}"
                     f"  {'yes' if ok3 else 'NO'} / {'yes' if ok6 else 'NO'} / "
                     f"{'yes' if beats else 'NO'}")
    lines += ["", "validation, second half (methods calibrated on the first half)",
              f"{'cell':<12}{'method':<20}{'cov80':>8}{'cov95':>8}{'WQL':>8}"]
    for c in cells:
        for name, m in c["validation_methods"].items():
            if name != "windows":
                lines.append(f"{c['dataset'] + ' H' + str(c['horizon']):<12}{name:<20}"
                             f"{m['coverage_80']:>8.3f}{m['coverage_95']:>8.3f}"
                             f"{m['wql']:>8.4f}")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--data-dir", type=Path, default=ROOT.parent / "shared" / "data")
    p.add_argument("--output-dir", type=Path,
                   default=Path(tempfile.gettempdir()) / "forecast-benchmarks")
    p.add_argument("--jobs", type=jobs_count, default=1, metavar="N",
                   help="cells trained at once, sharing the cores (default 1)")
    p.add_argument("--only", action="append", metavar="DATASET:H",
                   help="run only these cells, e.g. --only demo:24 (repeatable)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key in every cell (e.g. train.epochs=1)")
    p.add_argument("--cell", nargs=2, help=argparse.SUPPRESS)
    p.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    record.add_argument(p, "intervals")
    args = p.parse_args()
    if args.cell:
        print(json.dumps(run_cell(args.cell[0], int(args.cell[1]), args.data_dir,
                                  args.output_dir, args.threads, args.set)))
        return
    cells = [c for c in CELLS if not args.only or f"{c[0]}:{c[1]}" in args.only]
    if not cells:
        p.error(f"--only matches none of {[f'{d}:{h}' for d, h in CELLS]}")
    require_data(args.data_dir, sorted({d for d, _ in cells if d != "demo"}))
    run = record.start("intervals")
    with concurrent.futures.ThreadPoolExecutor(args.jobs) as pool:
        futures = {pool.submit(spawn, d, h, args): (d, h) for d, h in cells}
        for future in concurrent.futures.as_completed(futures):
            r = future.result()
            print(f"{r['dataset']} H={r['horizon']}: done in {r['wall_seconds']:.0f}s + "
                  f"{r['method_seconds']:.0f}s", flush=True)
    results = [f.result() for f in futures]
    order = {c: i for i, c in enumerate(cells)}
    results.sort(key=lambda r: order[(r["dataset"], r["horizon"])])
    print()
    print(table(results))
    record.finish(run, results, args.results)


if __name__ == "__main__":
    main()
