"""Draw docs/images/forecast.png, the README's picture: the demo model's forecast of one test
window of the synthetic series, beside its history and what happened, drawn by the same
`forecast.plots.forecast_vs_actual` that every tracked run logs.

    python docs/forecast_picture.py              # trains the demo config untracked (~1 min)
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from forecast.config import load_config
from forecast.plots import forecast_vs_actual
from forecast.runner import train_and_evaluate

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=ROOT / "docs" / "images" / "forecast.png")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="config override, e.g. train.epochs=1")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        cfg = load_config(ROOT / "pipelines" / "configs" / "demo.yaml", [
            "tracking.enabled=false", f"output_dir={tmp}", "train.progress=false", *args.set])
        outcome = train_and_evaluate(cfg)
        forecast_vs_actual(outcome.model, outcome.prepared, args.out, n_windows=1,
                           max_channels=3)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
