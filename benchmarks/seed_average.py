"""Does averaging the seeds' forecasts pay? Scores the models `benchmarks/etth.py` saved.

For each horizon whose seed models are all in --output-dir, prints the validation (and, for
the record, test) MSE of the single models (their mean) and of the average of their forecasts.

    python benchmarks/etth.py --dataset ETTh1 --output-dir runs/etth    # trains and saves
    python benchmarks/seed_average.py --dataset ETTh1 --output-dir runs/etth
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from forecast.bundle import load_bundle  # noqa: E402
from forecast.config import load_config  # noqa: E402
from forecast.runner import load_data  # noqa: E402
from forecast.windows import WindowSet, prepare  # noqa: E402


@torch.inference_mode()
def forecasts(model: torch.nn.Module, windows: WindowSet) -> tuple[torch.Tensor, torch.Tensor]:
    preds, targets = [], []
    for x, y in windows.batches(512):
        preds.append(model(x))
        targets.append(y)
    return torch.cat(preds), torch.cat(targets)


def score(dirs: list[Path], data_path: Path, split: str) -> tuple[float, float]:
    """(mean MSE of the single models, MSE of their averaged forecasts) on one split."""
    cfg = load_config(dirs[0] / "config.yaml", [f"data.path={data_path}"])
    windows = prepare(load_data(cfg), cfg.split, cfg.windows).windows(split)
    preds = []
    for d in dirs:
        pred, target = forecasts(load_bundle(d / "model").model.eval(), windows)
        preds.append(pred)
    single = statistics.fmean(float(((p - target) ** 2).mean()) for p in preds)
    averaged = float(((torch.stack(preds).mean(0) - target) ** 2).mean())
    return single, averaged


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--dataset", choices=("ETTh1", "ETTh2"), required=True)
    p.add_argument("--output-dir", type=Path, required=True,
                   help="the --output-dir the benchmark saved its cells to")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--data-dir", type=Path, default=ROOT.parent / "shared" / "data")
    args = p.parse_args()
    torch.set_num_threads(1)
    data_path = args.data_dir / f"{args.dataset}.csv"
    found = 0
    for horizon in (96, 192, 336, 720):
        dirs = [args.output_dir / f"{args.dataset.lower()}_h{horizon}_s{s}" for s in args.seeds]
        if not all((d / "model").is_dir() for d in dirs):
            continue
        found += 1
        val, test = score(dirs, data_path, "val"), score(dirs, data_path, "test")
        print(f"{args.dataset} H={horizon}: val MSE single {val[0]:.4f} averaged {val[1]:.4f} "
              f"({(val[1] / val[0] - 1) * 100:+.1f}%); test MSE single {test[0]:.4f} "
              f"averaged {test[1]:.4f}", flush=True)
    if not found:
        raise SystemExit(f"no horizon of {args.dataset} has a saved model for every seed "
                         f"{args.seeds} under {args.output_dir}")


if __name__ == "__main__":
    main()
