"""benchmarks/etth.py (and seed_average.py on its models) end to end on a synthetic ETTh-shaped
file: protocol checks and summary."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from forecast.synthetic import synthetic_frame

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "benchmarks" / "etth.py"


def run_benchmark(data_dir: Path, out_dir: Path, *extra: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, str(SCRIPT), "--dataset", "ETTh1", "--horizon", "96",
           "--data-dir", str(data_dir), "--output-dir", str(out_dir),
           "--set", "train.epochs=1", "--set", "train.max_windows_per_epoch=64",
           "--set", "windows.lookback=96", "--set", "eval.linear_max_windows=500", *extra]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600)


def on_saved_models(script: str, out_dir: Path, data_dir: Path) -> subprocess.CompletedProcess:
    """A script that scores the models the benchmark saved (seeds 0 and 1), run to success."""
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), "--dataset",
                           "ETTh1", "--output-dir", str(out_dir), "--seeds", "0", "1",
                           "--data-dir", str(data_dir)], capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr
    return proc


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # 14400 rows: the protocol's train + val + test blocks, 7 channels like ETTh1
    folder = tmp_path_factory.mktemp("etth")
    synthetic_frame(n_rows=14400, n_channels=7, seed=3).to_csv(folder / "ETTh1.csv", index=False)
    return folder


@pytest.mark.slow
def test_two_seeds_in_two_jobs_summarise_to_mean_and_std(data_dir: Path, tmp_path: Path) -> None:
    proc = run_benchmark(data_dir, tmp_path, "--seeds", "0", "1", "--jobs", "2")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    per_seed = {line.split(":")[0] for line in lines if line.startswith("ETTh1 H=96 seed=")}
    assert per_seed == {"ETTh1 H=96 seed=0", "ETTh1 H=96 seed=1"}
    cell = json.loads(lines[-1])
    assert cell["seeds"] == [0, 1]
    assert cell["windows"] == 2880 - 96 + 1  # every stride-1 test window is scored
    assert cell["windows_drop_last"] == (2880 - 96 + 1) // 128 * 128  # PatchTST's loader's
    assert cell["mse_drop_last"] > 0
    assert cell["lookback"] == 96
    seed_mses = [float(line.split("mse ")[1].split()[0]) for line in lines
                 if line.startswith("ETTh1 H=96 seed=")]
    assert cell["mse"] == pytest.approx(sum(seed_mses) / 2, abs=1e-4)
    assert cell["mse_std"] == pytest.approx(abs(seed_mses[0] - seed_mses[1]) / 2, abs=1e-4)
    assert cell["train_windows_per_second"] > 0
    assert 0 < cell["peak_rss_mb"] < 4096
    assert set(cell["baselines"]) >= {"naive", "linear"}
    assert f"{'ETTh1':<6}{96:>5}{96:>5}" in proc.stdout  # table row: data, H, L

    # benchmarks/seed_average.py on the models this run saved
    avg = on_saved_models("seed_average.py", tmp_path, data_dir)
    line = avg.stdout.strip()
    assert line.startswith("ETTh1 H=96: val MSE single ")
    test_single, test_averaged = (float(v) for v in line.split("test MSE single ")[1]
                                  .split(" averaged "))
    assert test_single == pytest.approx(cell["mse"], abs=1e-4)  # same models, same windows
    assert test_averaged <= test_single + 1e-6  # squared error is convex in the forecast

    # benchmarks/head_scale.py on the same models: at a = 1 it scores what seed_average does
    scaled = on_saved_models("head_scale.py", tmp_path, data_dir)
    line = scaled.stdout.strip()
    val_single = float(avg.stdout.split("val MSE single ")[1].split()[0])
    at_one = float(line.split("val MSE a=1 ")[1].split(",")[0])
    at_zero = float(line.split("a=0 ")[1].split(",")[0])
    hindsight = float(line.split("hindsight ")[1].split(";")[0])
    assert at_one == pytest.approx(val_single, abs=1e-4)
    assert hindsight <= min(at_one, at_zero) + 1e-4  # the best a in [0, 2] beats 0 and 1


def test_wrong_split_is_refused(data_dir: Path, tmp_path: Path) -> None:
    proc = run_benchmark(data_dir, tmp_path, "--set", "split.train=8000")
    assert proc.returncode != 0
    assert "does not use the protocol's row split" in proc.stderr


def test_missing_data_file_names_the_path(tmp_path: Path) -> None:
    proc = run_benchmark(tmp_path, tmp_path)
    assert proc.returncode != 0
    assert f"{tmp_path / 'ETTh1.csv'} not found; pass --data-dir" in proc.stderr


@pytest.mark.parametrize(("jobs", "message"), [
    ("0", "argument --jobs: 0 is outside 1..{cores} (the cores available)"),
    ("1000", "argument --jobs: 1000 is outside 1..{cores} (the cores available)"),
    ("two", "argument --jobs: 'two' is not a whole number"),
])
def test_bad_jobs_is_refused_by_name(data_dir: Path, tmp_path: Path, jobs: str,
                                     message: str) -> None:
    proc = run_benchmark(data_dir, tmp_path, "--jobs", jobs)
    assert proc.returncode == 2
    assert message.format(cores=len(os.sched_getaffinity(0))) in proc.stderr


def test_repeated_seed_is_refused(data_dir: Path, tmp_path: Path) -> None:
    proc = run_benchmark(data_dir, tmp_path, "--seeds", "0", "0")
    assert proc.returncode == 2
    assert "--seeds 0 0: each seed once" in proc.stderr


def run_seed_average(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "benchmarks" / "seed_average.py"), *args],
                          capture_output=True, text=True, timeout=120)


def test_seed_average_without_saved_models_names_the_folder(tmp_path: Path) -> None:
    proc = run_seed_average("--dataset", "ETTh2", "--output-dir", str(tmp_path))
    assert proc.returncode == 1
    assert (f"no horizon of ETTh2 has a saved model for every seed [0, 1, 2] under {tmp_path}"
            in proc.stderr)


def test_seed_average_refuses_a_repeated_seed(tmp_path: Path) -> None:
    proc = run_seed_average("--dataset", "ETTh1", "--output-dir", str(tmp_path),
                            "--seeds", "0", "0")
    assert proc.returncode == 2
    assert "--seeds: each seed once" in proc.stderr


@pytest.mark.parametrize("horizon", [96, 192, 336, 720])
@pytest.mark.parametrize("dataset", ["ETTh1", "ETTh2"])
def test_peer_config_applies_to_every_shipped_config(dataset: str, horizon: int) -> None:
    # --peer-config turns the linear skip off; a config that solves it by least squares must
    # still validate, with PatchTST's architecture and lookback
    sys.path.insert(0, str(SCRIPT.parent))
    try:
        from etth import PEER, config_for
    finally:
        sys.path.remove(str(SCRIPT.parent))
    from forecast.config import load_config

    cfg = load_config(config_for(dataset, horizon), PEER)
    assert (cfg.windows.lookback, cfg.model.d_model, cfg.model.n_layers) == (336, 16, 3)
    assert not cfg.model.linear_skip and cfg.model.skip_fit == "gradient"
    assert cfg.model.skip_huber_delta is None and cfg.model.skip_rank is None


def test_head_scale_quadratic_by_hand() -> None:
    sys.path.insert(0, str(SCRIPT.parent))
    try:
        from head_scale import Quadratic
    finally:
        sys.path.remove(str(SCRIPT.parent))
    # errors e = [1, -1] with head off, head contributions d = [1, 1]: sse(a) = (1 + a)^2 +
    # (a - 1)^2 = 2 + 2 a^2, least at a = 0
    q = Quadratic(sq=2.0, cross=0.0, head_sq=2.0, values=2)
    assert q.sse(0.5) == pytest.approx(2.5) and q.best_scale() == 0.0
    # e = [-3], d = [1]: sse(a) = (a - 3)^2, least at 3, clipped to the range's 2
    assert Quadratic(sq=9.0, cross=-6.0, head_sq=1.0, values=1).best_scale() == 2.0
    assert Quadratic(sq=1.0).best_scale() == 1.0  # a zero head: nothing to scale


def test_drop_last_scores_only_whole_batches_of_128() -> None:
    # PatchTST's test loader drops the last `windows % 128`; the rows only those windows reach
    # are huge here, so scoring them would blow the figure up
    sys.path.insert(0, str(SCRIPT.parent))
    try:
        from etth import drop_last_scores
    finally:
        sys.path.remove(str(SCRIPT.parent))
    from forecast.windows import WindowIndex, WindowSet

    L, H, n_windows = 4, 2, 300
    rng = np.random.default_rng(0)
    data = rng.normal(size=(n_windows + L + H - 1, 3)).astype(np.float32)
    data[256 + L + H - 1:] = 100.0  # reached by windows 256.. only
    index = WindowIndex(np.array([0]), np.array([n_windows]), 1, np.array([0]))
    windows = WindowSet(torch.from_numpy(data), index, L, H)

    scores = drop_last_scores(lambda x: torch.zeros(len(x), H, 3), windows)

    targets = np.stack([data[k + L: k + L + H] for k in range(256)]).astype(np.float64)
    assert scores["windows_drop_last"] == 256
    assert scores["mse_drop_last"] == pytest.approx(np.mean(targets**2), rel=1e-9)
    assert scores["mae_drop_last"] == pytest.approx(np.mean(np.abs(targets)), rel=1e-9)
