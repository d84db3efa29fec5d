"""Memory of lazy windowing: a 10-million-row float32 series at L=512, H=96.

Builds the window index over the series (scaling included) and iterates one full shuffled
epoch of batches, then reports how much the process's peak RSS grew over the RSS it had with
the raw array alone. An N x L copy of the windows would need 10M x 608 x 4 B = 24 GB.

    python benchmarks/windows.py [--rows 10000000] [--batch-size 1024]
    python benchmarks/windows.py --rows 100000 --results /tmp/windows.json    # a smoke run

Prints a table, then one JSON line; saves it to benchmarks/results/windows.json (--results).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import record  # noqa: E402
from forecast.config import SplitConfig, WindowConfig  # noqa: E402
from forecast.data import SeriesSet  # noqa: E402
from forecast.windows import prepare  # noqa: E402


def rss_mb(field: str) -> float:
    """VmRSS (now) or VmHWM (peak so far) of this process, in MB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--rows", type=int, default=10_000_000)
    p.add_argument("--lookback", type=int, default=512)
    p.add_argument("--horizon", type=int, default=96)
    p.add_argument("--batch-size", type=int, default=1024)
    record.add_argument(p, "windows")
    args = p.parse_args()
    run = record.start("windows")

    rng = np.random.default_rng(0)
    raw = rng.standard_normal((args.rows, 1), dtype=np.float32).cumsum(0, dtype=np.float32)
    stamps = pd.date_range("2000-01-01", periods=args.rows, freq="min")
    series = SeriesSet(["s"], [raw], [stamps], ["value"], "min")
    raw_mb = raw.nbytes / 2**20
    before = rss_mb("VmRSS")

    t0 = time.perf_counter()
    prepared = prepare(series, SplitConfig(by="fractions", train=0.8, val=0.1, test=0.1),
                       WindowConfig(lookback=args.lookback, horizon=args.horizon))
    train = prepared.windows("train")
    n_batches, checksum = 0, 0.0
    for _x, y in train.batches(args.batch_size, shuffle=True):
        n_batches += 1
        checksum += float(y[:, -1].sum())  # touch the data so the gather really happens
    seconds = time.perf_counter() - t0
    added = rss_mb("VmHWM") - before
    naive_copy_gb = len(train) * (args.lookback + args.horizon) * 4 / 2**30

    print(f"{'rows':>12}{'L':>6}{'H':>5}{'windows':>12}{'batches':>9}{'raw MB':>9}"
          f"{'added peak RSS MB':>19}{'N x (L+H) copy GB':>19}{'seconds':>9}")
    print(f"{args.rows:>12}{args.lookback:>6}{args.horizon:>5}{len(train):>12}{n_batches:>9}"
          f"{raw_mb:>9.1f}{added:>19.1f}{naive_copy_gb:>19.1f}{seconds:>9.1f}")
    record.finish(run, {
        "rows": args.rows, "lookback": args.lookback, "horizon": args.horizon,
        "windows": len(train), "batches": n_batches, "batch_size": args.batch_size,
        "raw_mb": round(raw_mb, 1), "added_rss_mb": round(added, 1),
        "materialised_copy_gb": round(naive_copy_gb, 1), "seconds": round(seconds, 1),
    }, args.results)


if __name__ == "__main__":
    main()
