"""`forecast backtest` over 100, 1,000 and 10,000 cutoffs of ETTh1: peak RSS and time, as a
user runs it.

One model is trained with the shipped ETTh1 config (H=96), then the CLI backtests it in fresh
processes, at 100, 1,000 and 10,000 cutoffs one hour apart, with the baselines, into one
SQLite MLflow store. Each process reports its own peak RSS. Windows are scored 512 at a time,
so the peak grows until a batch is full (512 cutoffs of one series) and not after: memory
that stays flat from 1,000 to 10,000 cutoffs is the claim (ratio printed). The last line is
the JSON record.

    python benchmarks/backtest.py
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import record  # noqa: E402
from benchmarks.ett import config_for, require_data  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
COUNTS = (100, 1000, 10000)
STEP = 1  # hour between cutoffs: 10,000 of them fit in ETTh1's 17,420 rows


def forecast(*args: str) -> str:
    proc = subprocess.run([sys.executable, "-m", "forecast", *args], capture_output=True,
                          text=True)
    if proc.returncode:
        sys.stderr.write(proc.stderr[-5000:])
        raise SystemExit(f"forecast {args[0]} failed ({proc.returncode})")
    return proc.stdout


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--data-dir", type=Path, default=ROOT.parent / "shared" / "data")
    p.add_argument("--work-dir", type=Path, help="where the model, store and CSVs go "
                   "(default: a temporary folder)")
    p.add_argument("--counts", type=lambda t: [int(v) for v in t.split(",")],
                   default=list(COUNTS), help="cutoff counts, ascending (default: 100,1000)")
    p.add_argument("--step", type=int, default=STEP, help=f"hours between cutoffs ({STEP})")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key of the training (e.g. train.epochs=1)")
    p.add_argument("--model", type=Path, help="backtest this model directory (trained on "
                   "ETTh1 with its config beside it) instead of training one")
    record.add_argument(p, "backtest")
    args = p.parse_args()
    require_data(args.data_dir, ["ETTh1"])
    run = record.start("backtest")
    work = args.work_dir or Path(tempfile.mkdtemp(prefix="forecast-backtest-"))
    work.mkdir(parents=True, exist_ok=True)
    uri = f"sqlite:///{work / 'mlflow.db'}"
    model = work / "runs" / "etth1" / "model"
    t0 = time.perf_counter()
    if args.model is None:
        forecast("train", "--config", str(config_for("ETTh1", 96)), "--data",
                 str(args.data_dir / "ETTh1.csv"), "--output-dir", str(work / "runs"),
                 "--tracking-uri", uri, "--set", "train.progress=false",
                 *(a for item in args.set for a in ("--set", item)))
    else:
        model = args.model
    train_seconds = time.perf_counter() - t0 if args.model is None else None
    results = []
    for count in args.counts:
        out = work / f"backtest_{count}.csv"
        t0 = time.perf_counter()
        stdout = forecast("backtest", "--model", str(model), "--cutoffs", str(count),
                          "--step", str(args.step), "--out", str(out), "--tracking-uri", uri)
        wall = time.perf_counter() - t0
        rss = float(re.search(r"peak RSS (\d+) MB", stdout).group(1))
        table = pd.read_csv(out)
        mean = table.groupby("forecaster")[["mse", "coverage_80", "coverage_95", "wql"]].mean()
        print(stdout.strip().splitlines()[-1])
        results.append({"cutoffs": count, "step": args.step, "wall_seconds": round(wall, 1),
                        "peak_rss_mb": rss, "windows": int(table["windows"].sum() // 3),
                        "mean_by_cutoff": mean.round(4).to_dict(orient="index"),
                        "summary": stdout.strip().splitlines()[:6]})
    small, large = results[0], results[-1]
    summary = {"dataset": "ETTh1", "horizon": 96, "config": str(
        config_for("ETTh1", 96).relative_to(ROOT)),
        "train_seconds": None if train_seconds is None else round(train_seconds, 1),
        "runs": results, "rss_ratio_most_to_fewest": round(large["peak_rss_mb"]
                                                           / small["peak_rss_mb"], 3),
        "rss_ratio_most_to_second": round(large["peak_rss_mb"] / results[-2]["peak_rss_mb"],
                                          3)}
    print()
    print(f"{'cutoffs':>8}{'wall s':>9}{'peak RSS MB':>13}  model mse / cov80 / cov95 / wql")
    for r in results:
        m = r["mean_by_cutoff"]["model"]
        print(f"{r['cutoffs']:>8}{r['wall_seconds']:>9.1f}{r['peak_rss_mb']:>13.0f}  "
              f"{m['mse']:.4f} / {m['coverage_80']:.3f} / {m['coverage_95']:.3f} / "
              f"{m['wql']:.4f}")
    print(f"peak RSS at {large['cutoffs']:,} cutoffs / at {results[-2]['cutoffs']:,}: "
          f"{summary['rss_ratio_most_to_second']:.3f}, / at {small['cutoffs']:,}: "
          f"{summary['rss_ratio_most_to_fewest']:.3f}")
    record.finish(run, summary, args.results)


if __name__ == "__main__":
    main()
