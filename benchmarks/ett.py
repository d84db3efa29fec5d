"""ETTh1/ETTh2/ETTm2 long-horizon benchmark, following ../shared/BENCHMARK.md exactly.

Each set's rows split train/val/test as the protocol says (ETTh: 8640/2880/2880; ETTm2:
34560/11520/11520); scaler fitted on train rows; val/test windows start L rows before their
block; every stride-1 test window is scored (test rows - H + 1); MSE/MAE on scaled values over
all windows, steps and the 7 channels. Each cell also scores the least-squares skip alone (the
trained model with the encoder's head set to zero, what training starts from) on validation
and test, so the table says what the encoder adds.

    python benchmarks/ett.py                        # all datasets, all horizons, seeds 0 1 2
    python benchmarks/ett.py --dataset ETTh1 --horizon 96      # one cell
    python benchmarks/ett.py --seeds 0                         # one seed
    python benchmarks/ett.py --dataset ETTh1 --horizon 96 --peer-config    # PatchTST's arch
    python benchmarks/ett.py --seeds 0 1 2 --jobs 2            # two trainings at a time

Each (dataset, horizon, seed) trains in its own subprocess, so peak RSS is that cell's own.
With --jobs N, N subprocesses run at once and share the cores (cores // N torch threads each):
on a 2-core machine two 1-thread trainings finish about 1.2x sooner in total than one after
the other at 2 threads, but each cell's train time and windows/s are then per-thread figures.
Prints a table, then one JSON line (an object for one cell, a list for several), saved to
benchmarks/results/ett.json for a run of the whole table with the shipped configs, else to
benchmarks/results/ett_partial.json (--results names another file).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import copy
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from benchmarks import record  # noqa: E402
from forecast.metrics import MetricAccumulator, skill  # noqa: E402
from forecast.model import PatchTransformer  # noqa: E402
from forecast.train import available_cores  # noqa: E402
from forecast.windows import Prepared, WindowSet  # noqa: E402

HORIZONS = (96, 192, 336, 720)
DATASETS = ("ETTh1", "ETTh2", "ETTm2")
SEEDS = [0, 1, 2]
REFERENCE = json.loads((ROOT / "benchmarks" / "reference.json").read_text())
# the protocol's train / val / test rows per dataset (BENCHMARK.md)
SPLITS = {name: tuple(rows) for name, rows in REFERENCE["splits"].items()}


def targets() -> dict[tuple[str, int], float]:
    """Each cell's target test MSE: the better of PatchTST's two all-windows re-runs."""
    runs: dict[tuple[str, int], list[float]] = {}
    for r in REFERENCE["all_windows"]:
        if r["column"] in ("official", "best_lookback"):
            runs.setdefault((r["dataset"], r["horizon"]), []).append(r["mse"])
    return {key: min(mses) for key, mses in runs.items()}


TARGETS = targets()


# PatchTST's test loader (batch 128, drop_last=True) scores whole batches only: the published
# figures leave out the last `windows % 128` test windows, which ours keep.
PATCHTST_TEST_BATCH = 128


# PatchTST's ETTh1 architecture, as NeuralForecast trains it: for like-for-like throughput.
PEER = ["windows.lookback=336", "model.patch_len=16", "model.patch_stride=8",
        "model.n_layers=3", "model.n_heads=4", "model.d_model=16", "model.d_ff=128",
        "train.batch_size=128", "model.linear_skip=false", "model.skip_fit=gradient",
        "model.skip_huber_delta=null", "model.skip_rank=null"]


def config_for(dataset: str, horizon: int) -> Path:
    """The shipped config for a cell: a horizon-specific file if one exists."""
    specific = ROOT / "pipelines" / "configs" / f"{dataset.lower()}_h{horizon}.yaml"
    generic = ROOT / "pipelines" / "configs" / f"{dataset.lower()}.yaml"
    return specific if specific.is_file() else generic


def require_data(data_dir: Path, datasets: list[str] | tuple[str, ...]) -> None:
    """Exit with a message naming the file and the flag when a dataset's CSV is missing."""
    for name in datasets:
        if not (data_dir / f"{name}.csv").is_file():
            raise SystemExit(f"{data_dir / (name + '.csv')} not found; pass --data-dir")


def run_cell(dataset: str, horizon: int, seed: int, data_dir: Path, out_dir: Path,
             extra: list[str]) -> dict:
    """Train and score one (dataset, horizon, seed) in this process; return its figures."""
    from forecast.config import load_config
    from forecast.runner import train_and_evaluate

    overrides = [
        f"data.path={data_dir / (dataset + '.csv')}", f"windows.horizon={horizon}",
        f"train.seed={seed}", f"output_dir={out_dir}", f"name={dataset.lower()}_h{horizon}_s{seed}",
        "train.progress=false", "train.resume=false", *extra,
    ]
    cfg = load_config(config_for(dataset, horizon), overrides)
    split = (cfg.split.by, (cfg.split.train, cfg.split.val, cfg.split.test))
    if split != ("rows", SPLITS[dataset]):
        raise SystemExit(f"{config_for(dataset, horizon)} does not use the protocol's row split")
    t0 = time.perf_counter()
    outcome = train_and_evaluate(cfg)
    wall = time.perf_counter() - t0
    ev = outcome.evaluation
    dropped = drop_last_scores(outcome.model, outcome.prepared.windows("test"))
    expected_windows = SPLITS[dataset][2] - horizon + 1
    if ev.model.windows != expected_windows:
        raise SystemExit(f"scored {ev.model.windows} windows, protocol says {expected_windows}")
    return {
        "dataset": dataset, "horizon": horizon, "lookback": cfg.windows.lookback, "seed": seed,
        "mse": ev.model.mse, "mae": ev.model.mae, "windows": ev.model.windows, **dropped,
        "val_mse": outcome.validation.model.mse,
        "train_seconds": round(outcome.fit.seconds, 1), "wall_seconds": round(wall, 1),
        "epochs": len(outcome.fit.history), "best_epoch": outcome.fit.best_epoch,
        "train_windows_per_second": round(outcome.fit.windows_per_second, 1),
        "params": outcome.model.n_params(),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "baselines": {k: {"mse": v.mse, "mae": v.mae} for k, v in ev.baselines.items()},
        "config": str(config_for(dataset, horizon).relative_to(ROOT)),
        **skip_alone_scores(outcome.model, outcome.prepared),
    }


def skip_alone_scores(model: PatchTransformer, prepared: Prepared) -> dict[str, float | None]:
    """Validation and test MSE of the least-squares skip alone: the model with the encoder's
    head at zero, which is where training starts and what validation keeps at best epoch 0.
    None when the skip is not solved in closed form (there is no such model to compare)."""
    if model.cfg.skip_fit != "least_squares":
        return {"skip_val_mse": None, "skip_mse": None}
    alone = copy.deepcopy(model)
    with torch.no_grad():
        alone.head.weight.zero_()
        alone.head.bias.zero_()
    return {"skip_val_mse": all_window_mse(alone, prepared.windows("val")),
            "skip_mse": all_window_mse(alone, prepared.windows("test"))}


@torch.inference_mode()
def all_window_mse(model: Callable[[torch.Tensor], torch.Tensor], windows: WindowSet,
                   batch: int = 512) -> float:
    ones = np.ones(windows.n_channels)
    acc = MetricAccumulator(windows.horizon, np.zeros(windows.n_channels), ones, ones)
    for lo in range(0, len(windows), batch):
        x, y = windows.gather(torch.arange(lo, min(lo + batch, len(windows))))
        acc.update(model(x), y)
    return acc.result().mse


@torch.inference_mode()
def drop_last_scores(model: Callable[[torch.Tensor], torch.Tensor], windows: WindowSet,
                     batch: int = PATCHTST_TEST_BATCH) -> dict[str, float]:
    """MSE and MAE over the windows PatchTST's own test loader scores (context only: the
    benchmark's figures are over every window)."""
    n = len(windows) // batch * batch
    # the benchmark's own accumulator; scaled MSE/MAE only, so unit mean, scale and MASE terms
    ones = np.ones(windows.n_channels)
    acc = MetricAccumulator(windows.horizon, np.zeros(windows.n_channels), ones, ones)
    for lo in range(0, n, batch):
        x, y = windows.gather(torch.arange(lo, lo + batch))
        acc.update(model(x), y)
    scores = acc.result()
    return {"mse_drop_last": scores.mse, "mae_drop_last": scores.mae, "windows_drop_last": n}


def spawn_cell(dataset: str, horizon: int, seed: int, args: argparse.Namespace) -> dict:
    cmd = [sys.executable, __file__, "--cell", "--dataset", dataset, "--horizon", str(horizon),
           "--seeds", str(seed), "--data-dir", str(args.data_dir), "--output-dir",
           str(args.output_dir)]
    threads = [f"train.num_threads={available_cores() // args.jobs}"]
    for item in threads + (PEER if args.peer_config else []) + (args.set or []):
        cmd += ["--set", item]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode:
        sys.stderr.write(proc.stderr)
        raise SystemExit(f"cell {dataset} H={horizon} seed={seed} failed ({proc.returncode})")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def summarise(runs: list[dict]) -> dict:
    """One cell over its seeds: means (and std) of the figures, baselines from the first seed,
    and the encoder's skill over the skip alone (share of the skip's MSE it removes)."""
    first = runs[0]
    cell = {k: first[k] for k in ("dataset", "horizon", "lookback", "windows",
                                  "windows_drop_last", "params", "baselines", "config")}
    cell["seeds"] = [r["seed"] for r in runs]
    cell["seed_mse"] = [round(r["mse"], 4) for r in runs]
    cell["best_epochs"] = [r["best_epoch"] for r in runs]
    for key in ("mse", "mae", "val_mse", "skip_mse", "skip_val_mse", "mse_drop_last",
                "mae_drop_last", "train_seconds", "train_windows_per_second"):
        vals = [r[key] for r in runs]
        cell[key] = None if None in vals else round(statistics.fmean(vals), 4)
        if key in ("mse", "mae"):
            cell[f"{key}_std"] = round(statistics.pstdev(vals), 4) if len(vals) > 1 else 0.0
    for block in ("", "val_"):  # from the unrounded means
        skip = [r[f"skip_{block}mse"] for r in runs]
        cell[f"{block}skill_over_skip"] = None if None in skip else round(skill(
            statistics.fmean(r[f"{block}mse"] for r in runs), statistics.fmean(skip)), 4)
    cell["peak_rss_mb"] = max(r["peak_rss_mb"] for r in runs)
    return cell


def percent(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:+.1f}%"


def table(cells: list[dict]) -> str:
    head = (f"{'data':<6}{'H':>5}{'L':>5}{'MSE':>16}{'MAE':>16}{'target':>8}{'gap':>8}"
            f"{'naive':>8}{'linear':>8}{'skip':>8}{'enc val':>8}{'enc test':>9}"
            f"{'windows':>8}{'train s':>9}{'win/s':>8}{'params':>8}{'RSS MB':>8}")
    lines = [head, "-" * len(head)]
    for c in cells:
        target = TARGETS[(c["dataset"], c["horizon"])]
        skip = "n/a" if c["skip_mse"] is None else f"{c['skip_mse']:.4f}"
        lines.append(
            f"{c['dataset']:<6}{c['horizon']:>5}{c['lookback']:>5}"
            f"{c['mse']:>9.4f}±{c['mse_std']:<6.4f}{c['mae']:>9.4f}±{c['mae_std']:<6.4f}"
            f"{target:>8.3f}{c['mse'] - target:>+8.4f}"
            f"{c['baselines']['naive']['mse']:>8.3f}{c['baselines']['linear']['mse']:>8.3f}"
            f"{skip:>8}{percent(c['val_skill_over_skip']):>8}{percent(c['skill_over_skip']):>9}"
            f"{c['windows']:>8}{c['train_seconds']:>9.1f}{c['train_windows_per_second']:>8.0f}"
            f"{c['params']:>8}{c['peak_rss_mb']:>8.0f}")
    lines.append("MSE/MAE: mean±std over seeds, scaled values, all test windows; target: the "
                 "better of PatchTST's two all-windows re-runs; win/s counts one window of one "
                 "channel as one")
    lines.append("skip: test MSE of the least-squares skip alone; enc val / enc test: the share "
                 "of the skip's MSE the encoder removes on validation / test (0 when validation "
                 "kept the skip alone)")
    return "\n".join(lines)


def jobs_count(text: str) -> int:
    """--jobs: 1 up to the cores available (each training needs a core and about 1.3 GB)."""
    cores = available_cores()
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if not 1 <= n <= cores:
        raise argparse.ArgumentTypeError(f"{n} is outside 1..{cores} (the cores available)")
    return n


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--dataset", choices=DATASETS, action="append")
    p.add_argument("--horizon", type=int, choices=HORIZONS, action="append")
    p.add_argument("--seeds", type=int, nargs="+", default=SEEDS)
    p.add_argument("--data-dir", type=Path, default=ROOT.parent / "shared" / "data")
    p.add_argument("--output-dir", type=Path,
                   default=Path(tempfile.gettempdir()) / "forecast-benchmarks")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override a config key in every cell (e.g. train.epochs=2)")
    p.add_argument("--peer-config", action="store_true",
                   help="train PatchTST's exact ETTh1 architecture (L=336, patch 16 stride 8, "
                   "3 layers, 4 heads, d_model 16, d_ff 128, batch 128) for a like-for-like "
                   "train_windows_per_second; --set still applies after it")
    p.add_argument("--jobs", type=jobs_count, default=1, metavar="N",
                   help="trainings run at once, sharing the cores (default 1, at most the cores)")
    p.add_argument("--cell", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--results", type=Path, metavar="PATH",
                   help="where to save the result as JSON (default: benchmarks/results/"
                   "ett.json for the whole table with the shipped configs and seeds, else "
                   "ett_partial.json)")
    args = p.parse_args()
    require_data(args.data_dir, args.dataset or DATASETS)
    whole = not (args.dataset or args.horizon or args.set or args.peer_config
                 or args.seeds != SEEDS)
    results = args.results or record.RESULTS_DIR / ("ett.json" if whole else "ett_partial.json")

    if args.cell:  # child process: one seed of one cell
        print(json.dumps(run_cell(args.dataset[0], args.horizon[0], args.seeds[0],
                                  args.data_dir, args.output_dir, args.set or [])))
        return
    run = record.start("ett")
    if len(set(args.seeds)) < len(args.seeds):
        p.error(f"--seeds {' '.join(map(str, args.seeds))}: each seed once (a repeated seed "
                "would count the same run twice in the mean and std)")
    keys = [(d, h) for d in args.dataset or DATASETS for h in args.horizon or HORIZONS]
    pool = concurrent.futures.ThreadPoolExecutor(args.jobs)
    futures = {pool.submit(spawn_cell, d, h, s, args): (d, h, s)
               for d, h in keys for s in args.seeds}
    try:
        for future in concurrent.futures.as_completed(futures):
            (d, h, s), r = futures[future], future.result()
            print(f"{d} H={h} seed={s}: mse {r['mse']:.4f} mae {r['mae']:.4f} "
                  f"({r['train_seconds']:.0f}s, {r['epochs']} epochs)", flush=True)
    finally:  # a failed cell stops the cells not yet started
        pool.shutdown(cancel_futures=True)
    runs = {futures[f]: f.result() for f in futures}
    cells = [summarise([runs[(d, h, s)] for s in args.seeds]) for d, h in keys]
    print()
    print(table(cells))
    record.finish(run, cells[0] if len(cells) == 1 else cells, results)


if __name__ == "__main__":
    main()
