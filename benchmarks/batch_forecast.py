"""Batch-forecast benchmark: the local engine and the Spark engine on the same files.

Writes a long Parquet file of N series x `--rows` hourly rows (daily and weekly cycles, a
level and noise per series, each series ending at its own hour) for each N in `--series`,
trains a small single-channel model on the built-in synthetic series (1 epoch, capped
windows) with tracking on in a temporary SQLite store so that `models:/NAME@champion` exists,
then runs `forecast pipeline batch-forecast` once per engine and size, each in a subprocess.
A sampler reads /proc every 0.5 s for the job's whole process tree, so the peak RSS is the
driver's own, and on Spark also the JVM's and the Python workers' (each process's high-water
mark, VmHWM) and the largest total the tree held at once (the sum of PSS, which counts pages
that forked workers share once).

    python benchmarks/batch_forecast.py                     # 10,000 and 100,000 series, both
    python benchmarks/batch_forecast.py --series 50 --rows 300 --results /tmp/b.json  # smoke

Spark runs on `--spark-master` (local[2]: this machine's two cores) with its UI off. Both
engines forecast the same files with the same model; the Spark output is checked against the
local one (the same series and steps; values within float32 rounding, as batches differ).

Prints a table, then one JSON line: {"rows", "chunk_size", "spark_master", "runs": [{"engine",
"series", "series_forecast", "series_per_second", "job_seconds", "wall_seconds",
"peak_rss_mb": {"driver", "jvm", "python_workers", "tree_total"}, "model_loads"}], "fit":
{engine: {"fixed_seconds", "series_per_second_marginal"}}, "max_abs_diff"}, saved to
benchmarks/results/batch_forecast.json (--results).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from benchmarks import record  # noqa: E402
from benchmarks.proc import descendants, status_mb  # noqa: E402

NAME = "batch-bench"
CHANNEL = "load_0"  # the channel name of the model trained on the synthetic frame


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


class TreeSampler:
    """Peak memory of a process and all its descendants, from /proc (Linux)."""

    def __init__(self, pid: int, every: float = 0.5) -> None:
        self.pid, self.every = pid, every
        self.hwm: dict[int, tuple[str, float]] = {}  # pid → (role, VmHWM MB)
        self.total_mb = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> TreeSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _role(self, pid: int) -> str:
        if pid == self.pid:
            return "driver"
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            return "other"
        if "java" in cmd.split(" ", 1)[0]:
            return "jvm"
        return "python_workers" if "pyspark" in cmd else "other"

    def _sample(self) -> None:
        total = 0.0
        for pid in descendants(self.pid):
            hwm = status_mb(pid, "VmHWM")
            if hwm is None:
                continue
            total += self._pss_mb(pid)
            # the role is read each time: spark-submit's shell execs the JVM in place
            self.hwm[pid] = (self._role(pid), hwm)
        self.total_mb = max(self.total_mb, total)

    @staticmethod
    def _pss_mb(pid: int) -> float:
        """Proportional set size: pages shared with other processes (Spark's Python workers
        are forked from one daemon) counted once across them, not once in each."""
        try:
            for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    return int(line.split()[1]) / 1024
        except OSError:
            pass
        return 0.0

    def _run(self) -> None:
        while not self._stop.is_set():
            self._sample()
            self._stop.wait(self.every)

    def peaks(self) -> dict[str, float]:
        out = {"driver": 0.0, "jvm": 0.0, "python_workers": 0.0}
        for role, mb in self.hwm.values():
            if role in out:
                out[role] = max(out[role], mb)
        return {**{k: round(v, 1) for k, v in out.items()}, "tree_total": round(self.total_mb, 1)}


def run_job(engine: str, data: Path, out: Path, uri: str, args: argparse.Namespace
            ) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "forecast", "pipeline", "batch-forecast", "--engine", engine,
           "--model", f"models:/{NAME}@champion", "--tracking-uri", uri, "--input", str(data),
           "--output", str(out), "--chunk-size", str(args.chunk_size)]
    if engine == "spark":
        cmd += ["--spark-master", args.spark_master, "--spark-conf", "spark.ui.enabled=false",
                "--spark-conf", f"spark.driver.memory={args.spark_driver_memory}"]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "SPARK_LOCAL_IP": "127.0.0.1"}
    t0 = time.perf_counter()
    job = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                           text=True)  # logs: stderr
    with TreeSampler(job.pid) as sampler:
        stdout, _ = job.communicate()
    wall = time.perf_counter() - t0
    if job.returncode != 0:
        raise SystemExit(f"{engine} job failed with exit code {job.returncode}:\n{stdout}")
    summary = json.loads(stdout.strip().splitlines()[-1])
    return {"engine": engine, "series_forecast": summary["series_forecast"],
            "series_per_second": summary["series_per_second"],
            "job_seconds": summary["seconds"], "wall_seconds": round(wall, 2),
            "peak_rss_mb": sampler.peaks(), "model_loads": summary["model_loads"]}


def read_sorted(path: Path) -> np.ndarray:
    table = pq.read_table(path, columns=["series_id", "step", CHANNEL]).to_pandas()
    return table.sort_values(["series_id", "step"])[CHANNEL].to_numpy()


def fit(runs: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Per engine, wall seconds = fixed + series / marginal rate, from its two largest runs."""
    out = {}
    for engine in dict.fromkeys(r["engine"] for r in runs):
        mine = sorted((r for r in runs if r["engine"] == engine), key=lambda r: r["series"])
        if len(mine) < 2:
            continue
        a, b = mine[-2], mine[-1]
        per = (b["wall_seconds"] - a["wall_seconds"]) / (b["series"] - a["series"])
        out[engine] = {"fixed_seconds": round(a["wall_seconds"] - per * a["series"], 1),
                       "series_per_second_marginal": round(1 / per, 1) if per > 0 else None}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--series", default="10000,100000",
                        help="comma-separated series counts (default 10000,100000)")
    parser.add_argument("--rows", type=int, default=500, help="hourly rows per series")
    parser.add_argument("--chunk-size", type=int, default=2000)
    parser.add_argument("--engines", default="local,spark", help="local, spark or both")
    parser.add_argument("--spark-master", default="local[2]")
    parser.add_argument("--spark-driver-memory", default="4g")
    parser.add_argument("--workdir", type=Path, help="keep files here (default: a temp dir)")
    record.add_argument(parser, "batch_forecast")
    args = parser.parse_args()
    sizes = [int(n) for n in args.series.split(",")]
    engines = args.engines.split(",")
    run = record.start("batch_forecast")

    with tempfile.TemporaryDirectory() as tmp:
        work = args.workdir or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        uri = f"sqlite:///{work / 'mlflow.db'}"
        t0 = time.perf_counter()
        register_model(work, uri)
        print(f"trained and registered models:/{NAME}@champion in "
              f"{time.perf_counter() - t0:.1f}s", flush=True)
        runs, max_diff = [], 0.0
        for n in sizes:
            data = work / f"series-{n}.parquet"
            t0 = time.perf_counter()
            write_series(data, n, args.rows)
            print(f"wrote {n:,} series x {args.rows} rows ({data.stat().st_size / 2**20:.0f} MB)"
                  f" in {time.perf_counter() - t0:.1f}s", flush=True)
            outputs = {}
            for engine in engines:
                outputs[engine] = work / f"forecasts-{engine}-{n}.parquet"
                result = {"series": n, **run_job(engine, data, outputs[engine], uri, args)}
                runs.append(result)
                peak = result["peak_rss_mb"]
                print(f"{engine:>5} {n:>9,} series: {result['series_per_second']:>8,.0f} "
                      f"series/s, job {result['job_seconds']:6.1f}s, wall "
                      f"{result['wall_seconds']:6.1f}s, peak RSS driver {peak['driver']:.0f} MB"
                      + (f", JVM {peak['jvm']:.0f} MB, largest Python worker "
                         f"{peak['python_workers']:.0f} MB, whole tree at once "
                         f"{peak['tree_total']:.0f} MB; model loads {result['model_loads']}"
                         if engine == "spark" else ""), flush=True)
            if len(outputs) == 2:  # the same series and steps, values to float32 rounding
                local, spark = (read_sorted(outputs[e]) for e in ("local", "spark"))
                assert local.shape == spark.shape
                max_diff = max(max_diff, float(np.abs(local - spark).max()))
                np.testing.assert_allclose(spark, local, rtol=1e-5, atol=1e-5)
            for path in outputs.values():  # the next size needs the disk more
                subprocess.run(["rm", "-rf", str(path)], check=True)
            data.unlink()
        fitted = fit(runs)
        for engine, f in fitted.items():
            print(f"{engine}: wall = {f['fixed_seconds']}s fixed + series / "
                  f"{f['series_per_second_marginal']} series/s")
    record.finish(run, {"rows": args.rows, "chunk_size": args.chunk_size,
                        "spark_master": args.spark_master if "spark" in engines else None,
                        "runs": runs, "fit": fitted, "max_abs_diff": max_diff}, args.results)


if __name__ == "__main__":
    main()
