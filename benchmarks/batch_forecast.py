"""Batch-forecast benchmark: many synthetic hourly series through the batch-forecast job.

Writes a long Parquet file of `--series` series x `--rows` hourly rows (daily and weekly
cycles, a level and noise per series, each series ending at its own hour), trains a small
single-channel model on the built-in synthetic series (1 epoch, capped windows) with tracking
on in a temporary SQLite store so that `models:/NAME@champion` exists, then runs the batch job
in a subprocess, so that the peak RSS reported is the job's own.

    python benchmarks/batch_forecast.py [--series 10000] [--rows 500] [--chunk-size 2000]
    python benchmarks/batch_forecast.py --series 50 --rows 300 --results /tmp/b.json   # smoke

Prints the job's series/s, wall seconds and peak RSS (the budget is 1.5 GB), then one JSON
line: {"series", "rows", "chunk_size", "series_forecast", "series_per_second",
"job_seconds", "wall_seconds", "peak_rss_mb", "rss_budget_mb", "within_budget"}, saved to
benchmarks/results/batch_forecast.json (--results).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from benchmarks import record  # noqa: E402

NAME = "batch-bench"
CHANNEL = "load_0"  # the channel name of the model trained on the synthetic frame
RSS_BUDGET_MB = 1536


def write_series(path: Path, n_series: int, rows: int, seed: int = 0) -> None:
    """Long Parquet, written 1000 series per row group so this process stays small too."""
    rng = np.random.default_rng(seed)
    t = np.arange(rows, dtype=np.float64)
    start = np.datetime64("2024-01-01T00:00", "us")
    hour = np.timedelta64(1, "h")
    with pq.ParquetWriter(path, pa.schema([("series_id", pa.string()),
                                            ("date", pa.timestamp("us")),
                                            (CHANNEL, pa.float64())])) as writer:
        for lo in range(0, n_series, 1000):
            k = min(1000, n_series - lo)
            level, amp, week = rng.uniform(5, 20, k), rng.uniform(1, 3, k), rng.uniform(0, 1, k)
            phase = rng.uniform(0, 2 * np.pi, k)
            shift = rng.integers(0, 24 * 7, k)  # each series ends at its own hour
            values = (level[:, None] + amp[:, None] * np.sin(2 * np.pi * t / 24 + phase[:, None])
                      + week[:, None] * np.sin(2 * np.pi * t / 168)
                      + 0.3 * rng.standard_normal((k, rows)))
            stamps = start + (shift[:, None] + t[None, :].astype(np.int64)) * hour
            ids = np.repeat([f"s{i:06d}" for i in range(lo, lo + k)], rows)
            writer.write_table(pa.table({"series_id": ids, "date": stamps.reshape(-1),
                                         CHANNEL: values.reshape(-1)}))


def register_model(work: Path, uri: str) -> None:
    from forecast.config import load_config
    from forecast.synthetic import synthetic_frame
    from forecast.tracking import train_tracked

    csv = work / "train.csv"
    synthetic_frame(n_rows=2000, n_channels=1).to_csv(csv, index=False)
    cfg = load_config(ROOT / "pipelines" / "configs" / "demo.yaml", [
        f"data.path={csv}", f"output_dir={work / 'outputs'}", "train.epochs=1",
        "train.max_windows_per_epoch=2048", "train.progress=false", "train.resume=false",
        f"tracking.registered_model={NAME}", "tracking.experiment=batch-forecast-benchmark",
    ])
    train_tracked(cfg, uri)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--series", type=int, default=10_000)
    parser.add_argument("--rows", type=int, default=500, help="hourly rows per series")
    parser.add_argument("--chunk-size", type=int, default=2000)
    parser.add_argument("--workdir", type=Path, help="keep files here (default: a temp dir)")
    record.add_argument(parser, "batch_forecast")
    args = parser.parse_args()
    run = record.start("batch_forecast")

    with tempfile.TemporaryDirectory() as tmp:
        work = args.workdir or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        uri = f"sqlite:///{work / 'mlflow.db'}"
        data = work / "series.parquet"
        t0 = time.perf_counter()
        write_series(data, args.series, args.rows)
        print(f"wrote {args.series:,} series x {args.rows} rows to {data} "
              f"({data.stat().st_size / 2**20:.0f} MB) in {time.perf_counter() - t0:.1f}s",
              flush=True)
        t0 = time.perf_counter()
        register_model(work, uri)
        print(f"trained and registered models:/{NAME}@champion in "
              f"{time.perf_counter() - t0:.1f}s", flush=True)

        out = work / "forecasts.parquet"
        cmd = [sys.executable, "-m", "forecast", "pipeline", "batch-forecast",
               "--model", f"models:/{NAME}@champion",
               "--tracking-uri", uri, "--input", str(data), "--output", str(out),
               "--chunk-size", str(args.chunk_size)]
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        t0 = time.perf_counter()
        job = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, text=True)  # logs: stderr
        wall = time.perf_counter() - t0
        if job.returncode != 0:
            raise SystemExit(f"batch job failed with exit code {job.returncode}:\n{job.stdout}")
        summary = json.loads(job.stdout.strip().splitlines()[-1])
        # Cross-check: the largest RSS any child of this process reached (KB on Linux).
        children_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024

    peak = summary["peak_rss_mb"]
    ok = peak < RSS_BUDGET_MB
    print(f"\nbatch forecast: {summary['series_forecast']:,} series, "
          f"{summary['series_per_second']:,.0f} series/s")
    print(f"wall seconds:   {wall:.1f} (job's own timer {summary['seconds']:.1f}, the rest is "
          "interpreter start and imports)")
    print(f"peak RSS:       {peak:.0f} MB (largest child of this process: {children_mb:.0f} MB; "
          f"budget {RSS_BUDGET_MB} MB: {'OK' if ok else 'OVER'})")
    record.finish(run, {
        "series": args.series, "rows": args.rows, "chunk_size": args.chunk_size,
        "series_forecast": summary["series_forecast"],
        "series_per_second": summary["series_per_second"], "job_seconds": summary["seconds"],
        "wall_seconds": round(wall, 2), "peak_rss_mb": peak, "rss_budget_mb": RSS_BUDGET_MB,
        "within_budget": ok,
    }, args.results)


if __name__ == "__main__":
    main()
