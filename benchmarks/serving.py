"""Load benchmark: our FastAPI service against `mlflow models serve`, same model version.

Registers an ETTh1-shaped model (L=336, 7 channels, briefly trained) in a temporary SQLite
store, starts both servers on 127.0.0.1, and drives each with the same bounded load from an
asyncio HTTP/1.1 load generator (keep-alive connections): single-series requests at
concurrency 1, 16 and 64, the same at concurrency 1 with 3 quantiles asked for (ours only),
and a 256-series batch request. Every level is bounded in request count and in time. Both
servers get the same histories; MLflow's as `dataframe_split` rows.

    python benchmarks/serving.py [--data-dir ../shared/data] [--requests 400] [--workers 1,2]
    python benchmarks/serving.py --data-dir DIR --requests 20 --batch-requests 2 \
        --seconds 2 --skip-mlflow --set windows.lookback=48 --results /tmp/s.json   # smoke

Our service runs once per `--workers` count (default 1 and 2), `mlflow models serve` with the
first count. Prints a table, then one JSON line, saved to benchmarks/results/serving.json
(--results): {"ours_1w": {"c1": {"p50_ms", "p95_ms", "p99_ms", "rps", "errors"}, "c16",
"c64", "c1q3", "batch256"}, "ours_2w": {same keys}, "mlflow_1w": {same keys}}   ("mlflow_1w" left
out with --skip-mlflow)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from benchmarks import record  # noqa: E402
from benchmarks.ett import require_data  # noqa: E402

NAME = "etth1-serving-bench"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def register_model(data_dir: Path, uri: str, out: Path, overrides: list[str]) -> None:
    from forecast.config import load_config
    from forecast.tracking import train_tracked

    cfg = load_config(ROOT / "pipelines" / "configs" / "etth1.yaml", [
        f"data.path={data_dir / 'ETTh1.csv'}", f"output_dir={out}", "train.epochs=1",
        "train.max_windows_per_epoch=2048", "train.progress=false", "train.resume=false",
        f"tracking.registered_model={NAME}", "tracking.experiment=serving-benchmark",
        *overrides,
    ])
    train_tracked(cfg, uri)


def wait_for_workers(base: str, workers: int, timeout: float = 180) -> None:
    """Until every worker has loaded its model: /readyz answers from whichever worker takes
    the connection, but each worker sets its own `forecast_model_version_info` series (a `pid`
    label per worker) once its model is in."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        with urllib.request.urlopen(base + "/metrics", timeout=5) as reply:
            text = reply.read().decode()
        pids = set(re.findall(r'^forecast_model_version_info\{[^}]*pid="(\d+)"[^}]*\} 1\.0$',
                              text, flags=re.M))
        if len(pids) >= workers:
            return
        time.sleep(0.5)
    raise SystemExit(f"{workers} workers did not all load the model in {timeout:.0f} s")


def start(cmd: list[str], env: dict[str, str], base: str, ready_path: str) -> subprocess.Popen:
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 180
    while time.time() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"{cmd[:3]} exited: {proc.stderr.read().decode()[-2000:]}")
        try:
            with urllib.request.urlopen(base + ready_path, timeout=2) as reply:
                if reply.status == 200:
                    return proc
        except OSError:
            pass
        time.sleep(0.5)
    proc.kill()
    raise SystemExit(f"{cmd[:3]} did not become ready")


async def _exchange(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                    request: bytes) -> int:
    """One request on a keep-alive connection; returns the HTTP status."""
    writer.write(request)
    await writer.drain()
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":")[1])
    await reader.readexactly(length)
    return status


async def drive(port: int, path: str, body: bytes, concurrency: int, total: int,
                seconds: float) -> dict:
    """`total` requests (or as many as fit in `seconds`) over `concurrency` keep-alive
    connections, one request in flight on each. A raw asyncio HTTP/1.1 client: an httpx
    client spends ~4 ms of this 2-core machine's CPU per request, which would be measured as
    server latency."""
    request = (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json"
               f"\r\nContent-Length: {len(body)}\r\n\r\n").encode() + body
    latencies: list[float] = []
    errors = 0
    issued = 0
    deadline = time.perf_counter() + seconds

    async def worker() -> None:
        nonlocal issued, errors
        reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=2**26)
        try:
            while issued < total and time.perf_counter() < deadline:
                issued += 1
                t0 = time.perf_counter()
                try:
                    ok = await asyncio.wait_for(_exchange(reader, writer, request), 120) == 200
                except (OSError, asyncio.IncompleteReadError, TimeoutError):
                    ok = False
                    writer.close()
                    reader, writer = await asyncio.open_connection("127.0.0.1", port,
                                                                   limit=2**26)
                latencies.append(time.perf_counter() - t0)
                errors += not ok
        finally:
            writer.close()

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    wall = time.perf_counter() - started
    ms = np.array(latencies) * 1000
    return {"p50_ms": round(float(np.percentile(ms, 50)), 2),
            "p95_ms": round(float(np.percentile(ms, 95)), 2),
            "p99_ms": round(float(np.percentile(ms, 99)), 2),
            "rps": round(len(ms) / wall, 1), "errors": errors, "requests": len(ms)}


def bodies(frame: pd.DataFrame, channels: list[str], lookback: int) -> dict[str, dict[str, bytes]]:
    """The same histories in each server's format, at the data's own precision (ETTh's CSV holds
    float32 values printed to 16 digits; 3 decimals keep the 256-series body at 4.3 MB, under
    the service's 16 MiB default limit, where 16 digits made it 17.8 MB and every request a 413)."""
    values = frame[channels].to_numpy().round(3)
    single = values[-lookback:]
    starts = np.linspace(0, len(values) - lookback, 256).astype(int)
    batch = [values[s:s + lookback] for s in starts]

    def ours(histories: list[np.ndarray], **extra: Any) -> bytes:
        series = [{"id": f"s{i}", "history": {c: h[:, k].tolist() for k, c in enumerate(channels)}}
                  for i, h in enumerate(histories)]
        return json.dumps({"series": series, **extra}).encode()

    def mlflow(histories: list[np.ndarray]) -> bytes:
        rows = [[f"s{i}", *r] for i, h in enumerate(histories) for r in h.tolist()]
        return json.dumps({"dataframe_split": {"columns": ["series_id", *channels],
                                               "data": rows}}).encode()

    return {"ours": {"single": ours([single]), "batch": ours(batch),
                     "quantiles": ours([single], quantiles=[0.1, 0.5, 0.9])},
            "mlflow": {"single": mlflow([single]), "batch": mlflow(batch)}}


def measure(args: argparse.Namespace, tmp: Path) -> dict[str, dict[str, Any]]:
    """Register the model in a store under `tmp`, start each server, drive every load level."""
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    print(f"registering an ETTh1-shaped model in {uri} ...", flush=True)
    register_model(args.data_dir, uri, tmp / "outputs", args.set)
    from forecast.registry import load_version_forecaster

    forecaster = load_version_forecaster(uri, NAME, "1")
    frame = pd.read_csv(args.data_dir / "ETTh1.csv")
    payloads = bodies(frame, forecaster.channels, forecaster.lookback)

    env = dict(os.environ, MLFLOW_TRACKING_URI=uri)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    bin_dir = Path(sys.executable).parent
    servers: dict[str, tuple[list[str], str, str]] = {
        f"ours_{w}w": ([str(bin_dir / "forecast"), "-q", "serve", "--model", f"models:/{NAME}/1",
                        "--workers", str(w)], "/v1/forecast", "/readyz")
        for w in args.workers}
    if not args.skip_mlflow:  # the peer, at the first worker count
        servers[f"mlflow_{args.workers[0]}w"] = (
            [str(bin_dir / "mlflow"), "models", "serve", "-m", f"models:/{NAME}/1",
             "--env-manager", "local", "--workers", str(args.workers[0])],
            "/invocations", "/ping")
    results: dict[str, dict[str, Any]] = {}
    for name, (cmd, path, ready) in servers.items():
        kind = name.split("_")[0]  # the request format: ours or mlflow
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        proc = start([*cmd, "--host", "127.0.0.1", "--port", str(port)], env, base, ready)
        try:
            workers = int(name.rsplit("_", 1)[1].removesuffix("w"))
            if kind == "ours" and workers > 1:
                wait_for_workers(base, workers)
            warm_up = min(30, args.requests)
            asyncio.run(drive(port, path, payloads[kind]["single"], 1, warm_up, 30))
            results[name] = {}
            for level in (1, 16, 64):
                results[name][f"c{level}"] = asyncio.run(drive(
                    port, path, payloads[kind]["single"], level,
                    args.requests * max(1, level // 8), args.seconds))
                print(f"{name} c{level}: {results[name][f'c{level}']}", flush=True)
            if kind == "ours":  # the calibrated quantiles, asked for in the request
                results[name]["c1q3"] = asyncio.run(drive(
                    port, path, payloads[kind]["quantiles"], 1, args.requests, args.seconds))
                print(f"{name} c1q3: {results[name]['c1q3']}", flush=True)
            results[name]["batch256"] = asyncio.run(drive(
                port, path, payloads[kind]["batch"], 1, args.batch_requests, args.seconds * 2))
            print(f"{name} batch256: {results[name]['batch256']}", flush=True)
        finally:
            proc.terminate()
            proc.wait(timeout=30)

    return results


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--data-dir", type=Path, default=ROOT.parent / "shared" / "data")
    p.add_argument("--requests", type=int, default=400, help="single-series requests per level")
    p.add_argument("--batch-requests", type=int, default=20)
    p.add_argument("--seconds", type=float, default=45, help="time bound per level")
    p.add_argument("--workers", type=lambda v: [int(w) for w in v.split(",")], default=[1, 2],
                   help="comma-separated worker counts for our service (default 1,2); "
                   "`mlflow models serve` runs with the first")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a key of the model's config (e.g. windows.lookback=48 for a "
                   "small, quick model)")
    p.add_argument("--skip-mlflow", action="store_true",
                   help="load only our service, not `mlflow models serve`")
    record.add_argument(p, "serving")
    args = p.parse_args()
    run = record.start("serving")
    require_data(args.data_dir, ["ETTh1"])

    with tempfile.TemporaryDirectory(prefix="serving-bench-") as tmp:
        results = measure(args, Path(tmp))
    head = f"{'server':<8}{'load':<10}{'p50 ms':>9}{'p95 ms':>9}{'p99 ms':>9}{'req/s':>9}" \
           f"{'errors':>8}{'requests':>10}"
    print()
    print(head)
    print("-" * len(head))
    for name, levels in results.items():
        for level, r in levels.items():
            print(f"{name:<8}{level:<10}{r['p50_ms']:>9.2f}{r['p95_ms']:>9.2f}{r['p99_ms']:>9.2f}"
                  f"{r['rps']:>9.1f}{r['errors']:>8}{r['requests']:>10}")
    first = args.workers[0]
    if f"mlflow_{first}w" in results:
        ratio = results[f"ours_{first}w"]["c16"]["rps"] / max(
            results[f"mlflow_{first}w"]["c16"]["rps"], 1e-9)
        print(f"throughput at concurrency 16, {first} worker(s): ours / mlflow = {ratio:.1f}x; "
              f"{os.cpu_count()} cores shared by the servers and the load generator")
    for w in args.workers[1:]:
        ratio = results[f"ours_{w}w"]["c16"]["rps"] / max(results[f"ours_{first}w"]["c16"]["rps"],
                                                          1e-9)
        print(f"throughput at concurrency 16: {w} workers / {first} = {ratio:.2f}x")
    summary = {k: {lvl: {m: r[m] for m in ("p50_ms", "p95_ms", "p99_ms", "rps", "errors")}
                   for lvl, r in v.items()} for k, v in results.items()}
    record.finish(run, summary, args.results)


if __name__ == "__main__":
    main()
