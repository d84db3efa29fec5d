"""Does averaging the seeds' forecasts pay? Scores the models `benchmarks/ett.py` saved.

For each horizon whose seed models are all in --output-dir, prints the validation (and, for
the record, test) MSE of the single models (their mean) and of the average of their forecasts.

    python benchmarks/ett.py --dataset ETTh1 --output-dir runs/etth    # trains and saves
    python benchmarks/seed_average.py --dataset ETTh1 --output-dir runs/etth

Prints a line per horizon, then one JSON line: a list of {dataset, horizon, seeds,
val_mse_single, val_mse_averaged, test_mse_single, test_mse_averaged}, saved to
benchmarks/results/seed_average.json (--results).
"""

from __future__ import annotations

import argparse
import statistics
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from benchmarks import record  # noqa: E402
from forecast.bundle import load_bundle  # noqa: E402
from forecast.config import load_config  # noqa: E402
from forecast.metrics import MetricAccumulator  # noqa: E402
from forecast.runner import load_data  # noqa: E402
from forecast.windows import prepare  # noqa: E402


@torch.inference_mode()
def score(dirs: list[Path], data_path: Path) -> dict[str, tuple[float, float]]:
    """Per split (val, test): (mean MSE of the single models, MSE of their averaged forecasts),
    scored by the accumulator the benchmark's own evaluation uses, one pass over the windows."""
    cfg = load_config(dirs[0] / "config.yaml", [f"data.path={data_path}"])
    prepared = prepare(load_data(cfg), cfg.split, cfg.windows)
    models = [load_bundle(d / "model").model.eval() for d in dirs]
    scaler, ones = prepared.scaler, np.ones(prepared.n_channels)  # MSE only: no MASE scale

    def accumulator() -> MetricAccumulator:
        return MetricAccumulator(prepared.horizon, scaler.mean, scaler.scale, ones)

    out = {}
    for split in ("val", "test"):
        singles, averaged = [accumulator() for _ in models], accumulator()
        for x, y in prepared.windows(split).batches(512):
            preds = [model(x) for model in models]
            for acc, pred in zip(singles, preds, strict=True):
                acc.update(pred, y)
            averaged.update(torch.stack(preds).mean(0), y)
        out[split] = statistics.fmean(a.result().mse for a in singles), averaged.result().mse
    return out


def options(description: str, name: str) -> argparse.Namespace:
    """The flags this script and head_scale.py share."""
    p = argparse.ArgumentParser(description=description,
                                formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--dataset", choices=("ETTh1", "ETTh2"), required=True)
    p.add_argument("--output-dir", type=Path, required=True,
                   help="the --output-dir the benchmark saved its cells to")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--data-dir", type=Path, default=ROOT.parent / "shared" / "data")
    record.add_argument(p, name)
    args = p.parse_args()
    if len(set(args.seeds)) < len(args.seeds):
        p.error("--seeds: each seed once (a repeated seed would weigh one model twice)")
    return args


def saved_cells(args: argparse.Namespace) -> Iterator[tuple[str, int, list[Path], Path]]:
    """(dataset, horizon, the seeds' run folders, data file) for each horizon whose seed
    models are all in --output-dir."""
    torch.set_num_threads(1)
    found = 0
    for horizon in (96, 192, 336, 720):
        dirs = [args.output_dir / f"{args.dataset.lower()}_h{horizon}_s{s}" for s in args.seeds]
        if all((d / "model").is_dir() for d in dirs):
            found += 1
            yield args.dataset, horizon, dirs, args.data_dir / f"{args.dataset}.csv"
    if not found:
        raise SystemExit(f"no horizon of {args.dataset} has a saved model for every seed "
                         f"{args.seeds} under {args.output_dir}")


def main() -> None:
    args = options(__doc__, "seed_average")
    run = record.start("seed_average")
    results = []
    for dataset, horizon, dirs, data_path in saved_cells(args):
        scores = score(dirs, data_path)
        val, test = scores["val"], scores["test"]
        print(f"{dataset} H={horizon}: val MSE single {val[0]:.4f} averaged {val[1]:.4f} "
              f"({(val[1] / val[0] - 1) * 100:+.1f}%); test MSE single {test[0]:.4f} "
              f"averaged {test[1]:.4f}", flush=True)
        results.append({"dataset": dataset, "horizon": horizon, "seeds": args.seeds,
                        **{f"{split}_mse_{kind}": round(scores[split][i], 4)
                           for split in ("val", "test")
                           for i, kind in enumerate(("single", "averaged"))}})
    record.finish(run, results, args.results)


if __name__ == "__main__":
    main()
