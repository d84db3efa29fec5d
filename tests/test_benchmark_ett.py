"""benchmarks/ett.py's checks of its flags and of the protocol, its drop-last scores, and
head_scale.py's arithmetic. The end-to-end run (with seed_average.py and head_scale.py on its
models) is tests/test_benchmarks.py's test_ett_seed_average_and_head_scale."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.test_benchmarks import etth_csv, run_etth

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "benchmarks" / "ett.py"


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return etth_csv(tmp_path_factory.mktemp("etth"))


def test_wrong_split_is_refused(data_dir: Path, tmp_path: Path) -> None:
    proc = run_etth(data_dir, tmp_path, "--set", "split.train=8000")
    assert proc.returncode != 0
    assert "does not use the protocol's row split" in proc.stderr


def test_missing_data_file_names_the_path(tmp_path: Path) -> None:
    proc = run_etth(tmp_path, tmp_path)
    assert proc.returncode != 0
    assert f"{tmp_path / 'ETTh1.csv'} not found; pass --data-dir" in proc.stderr


@pytest.mark.parametrize(("jobs", "message"), [
    ("0", "argument --jobs: 0 is outside 1..{cores} (the cores available)"),
    ("1000", "argument --jobs: 1000 is outside 1..{cores} (the cores available)"),
    ("two", "argument --jobs: 'two' is not a whole number"),
])
def test_bad_jobs_is_refused_by_name(data_dir: Path, tmp_path: Path, jobs: str,
                                     message: str) -> None:
    proc = run_etth(data_dir, tmp_path, "--jobs", jobs)
    assert proc.returncode == 2
    assert message.format(cores=len(os.sched_getaffinity(0))) in proc.stderr


def test_repeated_seed_is_refused(data_dir: Path, tmp_path: Path) -> None:
    proc = run_etth(data_dir, tmp_path, "--seeds", "0", "0")
    assert proc.returncode == 2
    assert "--seeds 0 0: each seed once" in proc.stderr


def run_seed_average(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "benchmarks" / "seed_average.py"), *args,
                           "--results", "/nonexistent/seed_average.json"],
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
@pytest.mark.parametrize("dataset", ["ETTh1", "ETTh2", "ETTm2"])
def test_every_shipped_config_uses_the_protocols_split(dataset: str, horizon: int) -> None:
    sys.path.insert(0, str(SCRIPT.parent))
    try:
        from ett import SPLITS, TARGETS, config_for
    finally:
        sys.path.remove(str(SCRIPT.parent))
    from forecast.config import load_config

    cfg = load_config(config_for(dataset, horizon), [f"windows.horizon={horizon}"])
    assert (cfg.split.by, cfg.split.train, cfg.split.val, cfg.split.test) == \
        ("rows", *SPLITS[dataset])
    assert SPLITS["ETTm2"] == (34560, 11520, 11520)  # BENCHMARK.md's ETTm2 rows
    assert 0.1 < TARGETS[(dataset, horizon)] < 0.5  # every cell has its target


@pytest.mark.parametrize("horizon", [96, 192, 336, 720])
@pytest.mark.parametrize("dataset", ["ETTh1", "ETTh2", "ETTm2"])
def test_peer_config_applies_to_every_shipped_config(dataset: str, horizon: int) -> None:
    # --peer-config turns the linear skip off; a config that solves it by least squares must
    # still validate, with PatchTST's architecture and lookback
    sys.path.insert(0, str(SCRIPT.parent))
    try:
        from ett import PEER, config_for
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
        from ett import drop_last_scores
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
