"""Soak: one `forecast serve` worker under steady load, with the served alias moved twice.

Registers two versions of an ETTh1-shaped model (L=336, 7 channels, briefly trained) in a
temporary SQLite store, serves `models:/NAME@champion` on 127.0.0.1 with one worker (alias
checked every `--reload-interval` seconds), and drives it with single-series requests at
concurrency 8 for `--minutes` minutes, each minute bounded in time and in request count.
The alias moves to version 2 about a third of the way in and back to version 1 about two
thirds in, mid-minute, while requests are in flight. After each minute it reads the server's
RSS (its whole process tree) and asks which version answers.

    python benchmarks/soak.py [--data-dir ../shared/data] [--minutes 10]     # about 12 minutes
    python benchmarks/soak.py --data-dir DIR --minutes 3 --minute-seconds 3 --set ... # smoke

Prints a line per minute, then one JSON line, saved to benchmarks/results/soak.json
(--results): {"concurrency", "minutes": [{"minute", "requests", "errors", "p50_ms",
"p99_ms", "rps", "rss_mb", "version"}], "alias_moves": [{"at_s", "version"}],
"rss_after_warmup_mb", "rss_end_mb", "rss_growth_pct", "errors"}.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import pandas as pd

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from benchmarks import record  # noqa: E402
from benchmarks.ett import require_data  # noqa: E402
from benchmarks.proc import descendants, status_mb  # noqa: E402
from benchmarks.serving import NAME, bodies, drive, free_port, register_model, start  # noqa: E402


def tree_rss_mb(pid: int) -> float:
    """RSS of a process and its descendants (uvicorn may run the worker as a child)."""
    return round(sum(status_mb(p, "VmRSS") or 0.0 for p in descendants(pid)), 1)


def served_version(port: int, body: bytes) -> str:
    request = urllib.request.Request(f"http://127.0.0.1:{port}/v1/forecast", data=body,
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as reply:
        return str(json.loads(reply.read())["model"]["version"])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--data-dir", type=Path, default=ROOT.parent / "shared" / "data")
    p.add_argument("--minutes", type=int, default=10)
    p.add_argument("--minute-seconds", type=float, default=60,
                   help="length of one measured minute (shorter for a smoke run)")
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument("--max-requests", type=int, default=100_000, help="per minute, at most")
    p.add_argument("--reload-interval", type=float, default=5)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a key of the model's config (a small model for a smoke run)")
    record.add_argument(p, "soak")
    args = p.parse_args()
    run = record.start("soak")
    require_data(args.data_dir, ["ETTh1"])
    from mlflow import MlflowClient

    with tempfile.TemporaryDirectory(prefix="soak-") as tmp:
        uri = f"sqlite:///{Path(tmp) / 'mlflow.db'}"
        for version in (1, 2):  # version 1 is champion; version 2 waits for the alias
            print(f"registering version {version} in {uri} ...", flush=True)
            register_model(args.data_dir, uri, Path(tmp) / f"outputs-{version}",
                           [*args.set, f"train.seed={version}",
                            "tracking.allow_below_baselines=true"])
        client = MlflowClient(tracking_uri=uri, registry_uri=uri)
        client.set_registered_model_alias(NAME, "champion", "1")
        from forecast.registry import load_version_forecaster

        forecaster = load_version_forecaster(uri, NAME, "1")
        body = bodies(pd.read_csv(args.data_dir / "ETTh1.csv"), forecaster.channels,
                      forecaster.lookback)["ours"]["single"]
        port = free_port()
        env = {**{k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")},
               "MLFLOW_TRACKING_URI": uri}
        cmd = [str(Path(sys.executable).parent / "forecast"), "-q", "serve", "--model",
               f"models:/{NAME}@champion", "--workers", "1", "--reload-interval",
               str(args.reload_interval), "--host", "127.0.0.1", "--port", str(port)]
        server = start(cmd, env, f"http://127.0.0.1:{port}", "/readyz")
        moves: list[dict[str, Any]] = []
        began = time.perf_counter()

        def move(version: str) -> None:
            client.set_registered_model_alias(NAME, "champion", version)
            moves.append({"at_s": round(time.perf_counter() - began, 1), "version": version})

        # mid-minute, a third and two thirds of the way in, so that each minute's closing
        # check sees one version: 1 before, 2 between, 1 again after
        marks = (max(2, round(args.minutes / 3) + 1), max(3, round(2 * args.minutes / 3) + 1))
        timers = [threading.Timer((minute - 0.5) * args.minute_seconds, move, [v])
                  for minute, v in zip(marks, ("2", "1"), strict=True)]
        minutes: list[dict[str, Any]] = []
        try:
            for t in timers:
                t.start()
            for minute in range(1, args.minutes + 1):
                result = asyncio.run(drive(port, "/v1/forecast", body, args.concurrency,
                                           args.max_requests, args.minute_seconds))
                row = {"minute": minute, "requests": result["requests"],
                       "errors": result["errors"], "p50_ms": result["p50_ms"],
                       "p99_ms": result["p99_ms"], "rps": result["rps"],
                       "rss_mb": tree_rss_mb(server.pid),
                       "version": served_version(port, body)}
                minutes.append(row)
                print(f"minute {minute:>2}: {row['requests']:>6} requests, {row['errors']} "
                      f"errors, p50 {row['p50_ms']:.1f} ms, p99 {row['p99_ms']:.1f} ms, "
                      f"{row['rps']:.0f} req/s, RSS {row['rss_mb']:.0f} MB, version "
                      f"{row['version']}", flush=True)
        finally:
            for t in timers:
                t.cancel()
            server.terminate()
            server.wait(timeout=30)
    warm, end = minutes[0]["rss_mb"], minutes[-1]["rss_mb"]
    growth = round(100 * (end - warm) / warm, 2)
    errors = sum(m["errors"] for m in minutes)
    print(f"RSS after warm-up {warm:.0f} MB, at the end {end:.0f} MB ({growth:+.1f}%); "
          f"{errors} errors in {sum(m['requests'] for m in minutes):,} requests; alias moved "
          f"at {[m['at_s'] for m in moves]} s")
    record.finish(run, {"concurrency": args.concurrency, "minutes": minutes,
                        "alias_moves": moves, "rss_after_warmup_mb": warm,
                        "rss_end_mb": end, "rss_growth_pct": growth, "errors": errors},
                  args.results)


if __name__ == "__main__":
    main()
