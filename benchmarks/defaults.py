"""Which recipe should the defaults be? Validation MSE of candidate recipes on every
development set, with the same run scored for the linear baseline and seasonal naive.

A candidate is a list of config overrides on top of the product's defaults; each dataset
contributes only its data file, its split (the benchmark protocol's rows for ETT) and its
horizon, as a new user's config would. The test block is never scored here.

    python benchmarks/defaults.py                                   # every candidate, every set
    python benchmarks/defaults.py --candidates encoder skip-robust --datasets demo ETTh1
    python benchmarks/defaults.py --data-dir ../shared/data --threads 1

Prints one line per (candidate, dataset) as it finishes, then the table of validation MSE
with each candidate's mean ratio to the linear baseline (below 1: better than it), and saves
benchmarks/results/defaults.json.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from benchmarks import record  # noqa: E402
from forecast.config import load_config  # noqa: E402
from forecast.data import season_for  # noqa: E402
from forecast.evaluate import evaluate  # noqa: E402
from forecast.runner import load_data, train_model  # noqa: E402

# Each candidate spelled out in full over the model and training keys that differ among them,
# so that it means the same whatever the defaults are. "skip-robust-0.1" is the default recipe.
SKIP = ["windows.lookback=336", "model.d_model=16", "model.n_layers=3", "model.d_ff=128",
        "model.dropout=0.3", "model.linear_skip=true", "model.skip_fit=least_squares",
        "model.skip_level=true", "model.skip_huber_delta=null", "train.epochs=12",
        "train.patience=3", "train.lr=0.001"]
CANDIDATES: dict[str, list[str]] = {
    "encoder": ["windows.lookback=96", "model.d_model=64", "model.n_layers=2",
                "model.d_ff=128", "model.dropout=0.1", "model.linear_skip=false",
                "train.epochs=20", "train.patience=5", "train.lr=0.001"],
    "skip": SKIP,
    "skip-robust": [*SKIP, "model.skip_huber_delta=0.5"],
    "skip-robust-0.1": [*SKIP, "model.skip_huber_delta=0.1"],
    "skip-L96": [*SKIP, "windows.lookback=96"],
    "skip-lr1e-4": [*SKIP, "train.lr=0.0001"],
}
# (file or None for the synthetic demo, split overrides, horizon)
ETTH_SPLIT = ["split.by=rows", "split.train=8640", "split.val=2880", "split.test=2880"]
DATASETS: dict[str, tuple[str | None, list[str], int]] = {
    "demo": (None, [], 24),
    "ETTh1": ("ETTh1.csv", ETTH_SPLIT, 96),
    "ETTh2": ("ETTh2.csv", ETTH_SPLIT, 96),
    "ETTm2": ("ETTm2.csv", ["split.by=rows", "split.train=34560", "split.val=11520",
                            "split.test=11520"], 96),
}


def run_one(candidate: str, dataset: str, data_dir: Path, threads: int, scratch: Path,
            extra: list[str]) -> dict[str, Any]:
    """Train `candidate` on `dataset` and score it and the baselines on validation."""
    file, split, horizon = DATASETS[dataset]
    overrides = [*split, f"windows.horizon={horizon}", *CANDIDATES[candidate], *extra,
                 f"train.num_threads={threads}", "train.progress=false", "tracking.enabled=false",
                 f"train.checkpoint_dir={scratch / f'{candidate}-{dataset}'}", "train.resume=false"]
    if file is not None:
        overrides.append(f"data.path={data_dir / file}")
    cfg = load_config(None, overrides)
    series = load_data(cfg)
    started = time.perf_counter()
    trained = train_model(cfg, series)
    season = cfg.eval.season or season_for(series.freq)
    val = evaluate(trained.model, trained.prepared, cfg.eval, season, "val").metrics()
    fit = trained.fit
    return {"candidate": candidate, "dataset": dataset, "horizon": horizon,
            "lookback": cfg.windows.lookback, "val_mse": val["val_mse"],
            "val_mae": val["val_mae"], "linear_mse": val["val_baseline_linear_mse"],
            "seasonal_naive_mse": val.get("val_baseline_seasonal_naive_mse"),
            "naive_mse": val["val_baseline_naive_mse"],
            "skip_alone_val_loss": fit.linear_val_loss, "best_epoch": fit.best_epoch,
            "epochs_run": len(fit.history), "seconds": round(time.perf_counter() - started, 1)}


def table(rows: list[dict[str, Any]], datasets: list[str]) -> str:
    out = [f"{'candidate':<14}" + "".join(f"{d:>10}" for d in datasets) + f"{'vs linear':>11}"]
    for candidate in dict.fromkeys(r["candidate"] for r in rows):
        mine = {r["dataset"]: r for r in rows if r["candidate"] == candidate}
        cells = "".join(f"{mine[d]['val_mse']:>10.4f}" if d in mine else f"{'-':>10}"
                        for d in datasets)
        ratio = statistics.mean(r["val_mse"] / r["linear_mse"] for r in mine.values())
        out.append(f"{candidate:<14}{cells}{ratio:>11.3f}")
    linear = {r["dataset"]: r["linear_mse"] for r in rows}
    out.append(f"{'linear':<14}" + "".join(f"{linear[d]:>10.4f}" if d in linear else
                                           f"{'-':>10}" for d in datasets))
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--candidates", nargs="+", choices=list(CANDIDATES),
                        default=list(CANDIDATES))
    parser.add_argument("--datasets", nargs="+", choices=list(DATASETS), default=list(DATASETS))
    parser.add_argument("--data-dir", type=Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per training")
    parser.add_argument("--scratch", type=Path, default=Path("/tmp/forecast-defaults"))
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="an override for every candidate (a quick check: fewer epochs)")
    record.add_argument(parser, "defaults")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    run = record.start("defaults", argv and [sys.argv[0], *argv])
    rows = []
    for dataset in args.datasets:
        for candidate in args.candidates:
            row = run_one(candidate, dataset, args.data_dir, args.threads, args.scratch,
                          args.set)
            rows.append(row)
            print(f"{candidate:<14}{dataset:<7} val MSE {row['val_mse']:.4f} (linear "
                  f"{row['linear_mse']:.4f}, skip alone {row['skip_alone_val_loss'] or 0:.4f}, "
                  f"best epoch {row['best_epoch']}/{row['epochs_run']}, {row['seconds']} s)",
                  flush=True)
    print(table(rows, args.datasets))
    record.finish(run, rows, args.results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
