"""Scaling training out: one config trained by 1 and by N processes (torchrun, gloo, one torch
thread each), the global batch held fixed (train.batch_size / N per rank), so that every run
follows the same optimisation and only the speed differs.

    python benchmarks/distributed.py                          # the demo config, 1 and 2 ranks
    python benchmarks/distributed.py --procs 1 2 4 --epochs 4
    python benchmarks/distributed.py --config pipelines/configs/etth1.yaml --max-windows 2048

Prints per run: training windows/s (one window of one channel counts as one), wall time of the
whole command, and the training time to the validation score every run reaches (the worst of
the runs' best validation losses); then the scaling efficiency T1 / (N * TN). Then a model on
paper: a ring all-reduce sends about 2 x 4 bytes per parameter per rank and step, against the
step's compute measured here, for a 1 and a 10 Gbit/s network, and from how many nodes the
gain stops. Last stdout line: one JSON object (also saved by benchmarks/record.py).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from benchmarks import record  # noqa: E402
from forecast.config import load_config  # noqa: E402
from forecast.model import build_model  # noqa: E402

EPOCH_LINE = re.compile(r"epoch (\d+): train_loss \S+ val_loss (\S+) lr \S+ ([\d.]+)s")
# per-message cost of one all-reduce hop on a LAN (TCP, gloo), on top of the bytes
LATENCY_S = 50e-6
NETWORKS = {"1 Gbit/s": 1e9 / 8, "10 Gbit/s": 10e9 / 8}
NODES = (1, 2, 4, 8, 16, 32, 64, 128)
# the model sizes the paper model is worked out for, with their data's channel counts
PAPER = {"pipelines/configs/demo.yaml": 5, "pipelines/configs/etth1.yaml": 7}


def train(config: str, procs: int, sets: list[str], out: Path) -> dict[str, Any]:
    """One `forecast train` at `procs` ranks: its epochs (val loss, seconds), windows/s, wall
    time and test MSE."""
    forecast = ["-m", "forecast", "train", "--config", config, "--set", f"output_dir={out}",
                "--set", "tracking.enabled=false", "--set", "train.num_threads=1",
                "--set", "train.progress=false", *sum((["--set", s] for s in sets), [])]
    launcher = [] if procs == 1 else [
        "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(procs)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, *launcher, *forecast], capture_output=True,
                          text=True, env=env, cwd=ROOT)
    wall = time.perf_counter() - t0
    if proc.returncode:
        raise SystemExit(f"{procs} process(es) failed:\n{proc.stderr[-3000:]}")
    epochs = [(int(e), float(v), float(s)) for e, v, s in EPOCH_LINE.findall(proc.stderr)]
    rate = re.search(r"in ([\d.]+)s, ([\d,]+) windows/s", proc.stdout)
    name = load_config(Path(ROOT / config), sets).name
    metrics = json.loads((out / name / "metrics.json").read_text())
    return {"procs": procs, "epochs": epochs, "train_seconds": float(rate[1]),
            "windows_per_second": float(rate[2].replace(",", "")), "wall_seconds": wall,
            "test_mse": metrics["test_mse"], "params": metrics["params"]}


def time_to(epochs: list[tuple[int, float, float]], target: float) -> float:
    """Training seconds until the first epoch whose validation loss is at most `target`."""
    spent = 0.0
    for _, val, seconds in epochs:
        spent += seconds
        if val <= target + 1e-12:
            return spent
    return float("nan")


def step_compute(path: str, channels: int, steps: int = 5) -> tuple[int, float]:
    """Parameter count and seconds of one forward + backward + AdamW step of the config's
    model on one global batch of random windows, one thread (the first step not timed)."""
    cfg = load_config(Path(ROOT / path), [])
    torch.set_num_threads(1)
    model = build_model(cfg.model, cfg.windows.lookback, cfg.windows.horizon, channels)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x = torch.randn(cfg.train.batch_size, cfg.windows.lookback, channels)
    y = torch.randn(cfg.train.batch_size, cfg.windows.horizon, channels)
    for i in range(steps + 1):
        if i == 1:
            t0 = time.perf_counter()
        optimizer.zero_grad()
        torch.nn.functional.mse_loss(model(x), y).backward()
        optimizer.step()
    return model.n_params(), (time.perf_counter() - t0) / steps


def paper_model(params: int, step_seconds: float) -> dict[str, Any]:
    """Speed-up at N nodes of a data-parallel step whose compute (`step_seconds` on one node)
    divides by N while a ring all-reduce of 4-byte gradients costs 2 (N-1)/N x 4 x params bytes
    per node plus 2 (N-1) message latencies; the node count after which the speed-up falls."""
    out: dict[str, Any] = {"params": params, "bytes_per_step": params * 4 * 2,
                           "step_seconds": step_seconds}
    for name, bandwidth in NETWORKS.items():
        speedups = []
        for n in NODES:
            comm = 0.0 if n == 1 else (2 * (n - 1) / n * 4 * params / bandwidth
                                       + 2 * (n - 1) * LATENCY_S)
            speedups.append(step_seconds / (step_seconds / n + comm))
        best = max(range(len(NODES)), key=lambda i: speedups[i])
        out[name] = {"speedup": dict(zip(map(str, NODES), [round(s, 2) for s in speedups],
                                         strict=True)),
                     # None: still gaining at the largest node count worked out
                     "gain_stops_after_nodes": None if best == len(NODES) - 1 else NODES[best]}
    return out


def stops(nodes: int | None) -> str:
    return f"still gaining at {NODES[-1]} nodes" if nodes is None \
        else f"gain stops after {nodes} nodes"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="pipelines/configs/demo.yaml")
    parser.add_argument("--procs", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--max-windows", type=int, default=4096,
                        help="train.max_windows_per_epoch (across all ranks)")
    record.add_argument(parser, "distributed")
    args = parser.parse_args()
    run = record.start("distributed")
    cfg = load_config(Path(ROOT / args.config), [])
    batch = cfg.train.batch_size
    if any(batch % n for n in args.procs):
        raise SystemExit(f"train.batch_size {batch} does not divide among {args.procs} ranks")

    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        for n in args.procs:
            sets = [f"train.epochs={args.epochs}", "train.patience=0",
                    f"train.max_windows_per_epoch={args.max_windows}",
                    f"train.batch_size={batch // n}"]  # the global batch stays `batch`
            runs.append(train(args.config, n, sets, Path(tmp) / f"n{n}"))
    target = max(min(v for _, v, _ in r["epochs"]) for r in runs)
    base = runs[0]
    base_time = time_to(base["epochs"], target)
    print(f"{args.config}: {args.epochs} epochs of {args.max_windows} windows, global batch "
          f"{batch}, one torch thread per process; target val loss {target:.4f}")
    print(f"{'procs':>5} {'windows/s':>10} {'train s':>8} {'wall s':>7} {'to target s':>11} "
          f"{'speed-up':>8} {'efficiency':>10} {'test MSE':>9}")
    for r in runs:
        r["seconds_to_target"] = time_to(r["epochs"], target)
        r["speedup"] = base_time / r["seconds_to_target"]
        r["efficiency"] = r["speedup"] / r["procs"] * base["procs"]
        print(f"{r['procs']:>5} {r['windows_per_second']:>10,.0f} {r['train_seconds']:>8.1f} "
              f"{r['wall_seconds']:>7.1f} {r['seconds_to_target']:>11.1f} {r['speedup']:>8.2f} "
              f"{r['efficiency']:>10.0%} {r['test_mse']:>9.4f}")

    print("\nOn paper: ring all-reduce of 4-byte gradients (2 x 4 x params bytes per node and "
          f"step) against one core's compute per step (measured); {LATENCY_S * 1e6:.0f} us per "
          "message")
    paper = {}
    for path, channels in PAPER.items():
        params, step = step_compute(path, channels)
        paper[path] = model = paper_model(params, step)
        print(f"{path}: {params:,} params, {model['bytes_per_step'] / 1e3:,.0f} kB per step, "
              f"compute {step * 1e3:.0f} ms per step on one core")
        for name in NETWORKS:
            s = model[name]["speedup"]
            print(f"  {name:>9}: speed-up " + "  ".join(f"{n}:{v}" for n, v in s.items())
                  + f"  -> {stops(model[name]['gain_stops_after_nodes'])}")
    record.finish(run, {"config": args.config, "epochs": args.epochs,
                        "max_windows_per_epoch": args.max_windows, "global_batch": batch,
                        "target_val_loss": target, "runs": runs, "paper": paper},
                  args.results)


if __name__ == "__main__":
    main()
