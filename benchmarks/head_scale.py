"""Would shrinking the encoder's correction pay? Scores models `benchmarks/ett.py` saved.

A shipped model forecasts RevIN⁻¹(skip(x) + head(z)): the least-squares linear forecast plus
the encoder's correction. Scaling the head's weight and bias by one scalar `a` gives
RevIN⁻¹(skip(x) + a·head(z)), which is affine in `a`, so two forward passes (head off, head on)
give the validation MSE at every `a` in closed form. `a` is chosen on validation, so it is
scored cross-fitted: chosen on the first half of the validation windows and scored on the
second, and the other way round. Reads the validation block only, never the test block.

    python benchmarks/ett.py --dataset ETTh2 --output-dir runs/etth      # trains and saves
    python benchmarks/head_scale.py --dataset ETTh2 --output-dir runs/etth

Prints a line per horizon, then one JSON line: a list of {dataset, horizon, seeds, val_mse_shipped,
val_mse_linear, val_mse_cross_fitted, val_mse_hindsight, scales}, saved to
benchmarks/results/head_scale.json (--results).
"""

from __future__ import annotations

import statistics
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from seed_average import options, saved_cells  # noqa: E402  (beside this script)

from benchmarks import record  # noqa: E402
from forecast.bundle import load_bundle  # noqa: E402
from forecast.config import load_config  # noqa: E402
from forecast.model import PatchTransformer  # noqa: E402
from forecast.runner import load_data  # noqa: E402
from forecast.windows import WindowSet, prepare  # noqa: E402

SCALE_RANGE = (0.0, 2.0)


@dataclass
class Quadratic:
    """Sum of squared errors at scale a: sq + a·cross + a²·head_sq, over `values` values."""

    sq: float = 0.0
    cross: float = 0.0
    head_sq: float = 0.0
    values: int = 0

    def sse(self, a: float) -> float:
        return self.sq + a * self.cross + a * a * self.head_sq

    def best_scale(self) -> float:
        if self.head_sq == 0:  # the head is zero (the linear forecast alone): a is moot
            return 1.0
        return min(max(-self.cross / (2 * self.head_sq), SCALE_RANGE[0]), SCALE_RANGE[1])


@torch.inference_mode()
def halves(model: PatchTransformer, windows: WindowSet, batch: int = 512) -> list[Quadratic]:
    """The squared-error quadratic in `a` of the first and the second half of the windows."""
    head = model.head
    saved = head.weight.clone(), head.bias.clone()
    out, cut = [Quadratic(), Quadratic()], len(windows) // 2
    for lo in range(0, len(windows), batch):
        k = torch.arange(lo, min(lo + batch, len(windows)))
        x, y = windows.gather(k)
        full = model(x).double()
        head.weight.zero_()
        head.bias.zero_()
        base = model(x).double()
        head.weight.copy_(saved[0])
        head.bias.copy_(saved[1])
        err, d = base - y.double(), full - base
        for part, rows in ((out[0], k < cut), (out[1], k >= cut)):
            part.sq += err[rows].square().sum().item()
            part.cross += 2 * (err[rows] * d[rows]).sum().item()
            part.head_sq += d[rows].square().sum().item()
            part.values += err[rows].numel()
    return out


def score(run_dir: Path, data_path: Path) -> dict[str, float]:
    """Validation MSE at a = 1 (as shipped), at a = 0 (the linear forecast alone), at the
    best a in hindsight, and cross-fitted."""
    cfg = load_config(run_dir / "config.yaml", [f"data.path={data_path}"])
    prepared = prepare(load_data(cfg), cfg.split, cfg.windows)
    model = load_bundle(run_dir / "model").model.eval()
    first, second = halves(model, prepared.windows("val"))
    n = first.values + second.values
    both = Quadratic(first.sq + second.sq, first.cross + second.cross,
                     first.head_sq + second.head_sq, n)
    return {
        "shipped": both.sse(1.0) / n, "linear": both.sse(0.0) / n,
        "hindsight": both.sse(both.best_scale()) / n, "scale": both.best_scale(),
        "cross_fitted": (second.sse(first.best_scale()) + first.sse(second.best_scale())) / n,
    }


def main() -> None:
    args = options(__doc__, "head_scale")
    run = record.start("head_scale")
    results = []
    for dataset, horizon, dirs, data_path in saved_cells(args):
        runs = [score(d, data_path) for d in dirs]
        mean = {k: statistics.fmean(r[k] for r in runs) for k in runs[0]}
        scales = " ".join(f"{r['scale']:.2f}" for r in runs)
        print(f"{dataset} H={horizon}: val MSE a=1 {mean['shipped']:.4f}, a=0 "
              f"{mean['linear']:.4f}, cross-fitted {mean['cross_fitted']:.4f} "
              f"({(mean['cross_fitted'] / mean['shipped'] - 1) * 100:+.2f}%), hindsight "
              f"{mean['hindsight']:.4f}; a per seed {scales}", flush=True)
        results.append({"dataset": dataset, "horizon": horizon, "seeds": args.seeds,
                         **{f"val_mse_{k}": round(mean[k], 4)
                            for k in ("shipped", "linear", "cross_fitted", "hindsight")},
                         "scales": [round(r["scale"], 4) for r in runs]})
    record.finish(run, results, args.results)


if __name__ == "__main__":
    main()
