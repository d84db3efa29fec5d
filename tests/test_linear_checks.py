"""benchmarks/linear_checks.py: its "shipped" row is the model's own least-squares skip, and each
variant reduces to it where it must."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from forecast.config import load_config
from forecast.model import build_model
from forecast.runner import load_data
from forecast.skip_fit import fit_linear_skip, huber_solve, normal_equations, solve
from forecast.synthetic import synthetic_frame
from forecast.train import validation_loss
from forecast.windows import prepare

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "benchmarks" / "linear_checks.py"


def load_script():
    spec = importlib.util.spec_from_file_location("linear_checks", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("etth")
    synthetic_frame(n_rows=14400, n_channels=7, seed=5).to_csv(folder / "ETTh1.csv", index=False)
    return folder


def run(data_dir: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), "--dataset", "ETTh1", "--horizon", "96",
                           "--data-dir", str(data_dir), "--results",
                           str(data_dir / "linear_checks.json"), *args],
                          capture_output=True, text=True, timeout=300)


def rows_of(proc: subprocess.CompletedProcess) -> dict[tuple[int, str], float]:
    assert proc.returncode == 0, proc.stderr
    return {(r["lookback"], r["variant"]): r["val_mse"]
            for r in json.loads(proc.stdout.strip().splitlines()[-1])}


def model_val_mse(data_dir: Path, *sets: str) -> float:
    """Validation MSE of etth1.yaml's model at L=48, H=96 (with `sets`), its skip solved by
    fit_linear_skip and nothing trained: what the script's rows must reproduce."""
    cfg = load_config(ROOT / "pipelines" / "configs" / "etth1.yaml", [
        f"data.path={data_dir / 'ETTh1.csv'}", "windows.lookback=48", "windows.horizon=96",
        *sets])
    prepared = prepare(load_data(cfg), cfg.split, cfg.windows)
    torch.manual_seed(0)
    model = build_model(cfg.model, 48, 96, prepared.n_channels)
    fit_linear_skip(model, prepared.windows("train"))
    return validation_loss(model, prepared.windows("val"), 512,
                           torch.nn.functional.mse_loss, torch.device("cpu"))


def test_shipped_row_is_the_models_least_squares_forecast(data_dir: Path) -> None:
    result = rows_of(run(data_dir, "--check", "ridge", "--lookbacks", "48", "--ridges", "1"))
    assert result[(48, "shipped")] == pytest.approx(model_val_mse(data_dir), abs=2e-4)
    # --ridges reaches the solve
    assert result[(48, "ridge 1")] != result[(48, "shipped")]


def test_level_rows_are_the_models_skip_with_the_level_input(data_dir: Path) -> None:
    result = rows_of(run(data_dir, "--check", "robust", "--level", "--lookbacks", "48",
                         "--deltas", "0.1"))
    assert result[(48, "shipped")] == pytest.approx(
        model_val_mse(data_dir, "model.skip_level=true"), abs=2e-4)
    robust = model_val_mse(data_dir, "model.skip_level=true", "model.skip_huber_delta=0.1")
    assert result[(48, "Huber rows, delta 0.1")] == pytest.approx(robust, abs=2e-4)
    # the level input reaches the fit: without it the plain row differs
    plain = rows_of(run(data_dir, "--check", "robust", "--lookbacks", "48", "--deltas", "0.1"))
    assert plain[(48, "shipped")] != result[(48, "shipped")]


def test_level_is_refused_where_the_check_maps_the_lookback_alone(data_dir: Path) -> None:
    proc = run(data_dir, "--check", "band", "--level", "--lookbacks", "48")
    assert proc.returncode == 2 and "--level: the band check" in proc.stderr


def test_rank_rows_are_the_models_reduced_rank_skip(data_dir: Path) -> None:
    result = rows_of(run(data_dir, "--check", "rank", "--lookbacks", "48", "--ranks", "8", "96"))
    # rank 96 = H is full rank: skipped, not scored as a variant
    assert set(result) == {(48, "shipped"), (48, "rank 8")}
    mse = model_val_mse(data_dir, "model.skip_rank=8")
    assert result[(48, "rank 8")] == pytest.approx(mse, abs=2e-4)
    assert result[(48, "rank 8")] != result[(48, "shipped")]


def test_lookback_average_rows_and_single_lookbacks_agree(data_dir: Path) -> None:
    shipped = rows_of(run(data_dir, "--check", "ridge", "--lookbacks", "64", "--ridges", "1"))
    combos = rows_of(run(data_dir, "--check", "lookbacks", "--lookbacks", "32", "64"))
    assert set(combos) == {(64, "32"), (64, "64"), (64, "32+64")}
    # the longest lookback alone is scored on the same windows as the plain fit at that lookback
    assert combos[(64, "64")] == pytest.approx(shipped[(64, "shipped")], abs=1e-4)


def test_full_band_is_the_full_rank_fit() -> None:
    script = load_script()
    # 2K - 1 = L frequencies span every lookback: an orthonormal change of basis, which
    # leaves the ridge solution unchanged
    gen = torch.Generator().manual_seed(0)
    features = torch.randn(400, 10, dtype=torch.float64, generator=gen)
    targets = torch.randn(400, 3, dtype=torch.float64, generator=gen)
    gram, cross, count = normal_equations([(features, targets)])
    full = solve(gram, cross, count)
    assert torch.allclose(script.band_limited(gram, cross, count, k=5), full, atol=1e-10)
    narrow = script.band_limited(gram, cross, count, k=2)
    assert not torch.allclose(narrow, full, atol=1e-3)
    basis = script.fourier_basis(9, 3)
    assert basis.shape == (9, 5)
    assert torch.allclose(basis.T @ basis, torch.eye(5, dtype=torch.float64), atol=1e-12)


def test_per_channel_maps_equal_the_shared_map_when_channels_are_copies(tmp_path: Path) -> None:
    frame = synthetic_frame(n_rows=14400, n_channels=1, seed=2)
    value = [c for c in frame.columns if c != "date"][0]
    frame["copy"] = frame[value] * 3.0 + 1.0  # the same series after per-column scaling
    frame.to_csv(tmp_path / "ETTh1.csv", index=False)
    result = rows_of(run(tmp_path, "--check", "per-channel", "--lookbacks", "48",
                         "--ridges", "0.001"))
    assert result[(48, "per channel, ridge 0.001")] == pytest.approx(
        result[(48, "shipped")], abs=1e-4)


def regression_batches(n_windows: int, outliers: bool = False):
    """float64 (x, y) batches of n_windows windows [B x 8 x 2] -> [B x 3 x 2]: y is a fixed
    linear map of x (plus, optionally, gross errors on every 10th window)."""
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(n_windows, 8, 2, dtype=torch.float64, generator=gen) + 5.0
    y = torch.einsum("blc,lh->bhc", x - x.mean(1, keepdim=True),
                     torch.randn(8, 3, dtype=torch.float64, generator=gen))
    y = y + x.mean(1, keepdim=True)
    if outliers:
        y[::10] += 50.0 * torch.randn(len(y[::10]), 3, 2, dtype=torch.float64, generator=gen)

    def each():
        for start in range(0, n_windows, 64):  # several batches, so window indices carry over
            yield x[start:start + 64], y[start:start + 64]
    return each


def test_unit_weights_reproduce_the_plain_fit() -> None:
    script = load_script()
    data = regression_batches(300)
    plain_gram, plain_cross, count = normal_equations(script.rows(data))
    plain = solve(plain_gram, plain_cross, count)
    ones = normal_equations(script.rows(data), lambda f, t: torch.ones(len(f), dtype=f.dtype))
    assert ones[2] == count == 600  # 300 windows of 2 channels
    assert torch.allclose(solve(*ones), plain, atol=1e-10)
    # an infinite half-life and a threshold no residual reaches are unit weights
    assert torch.allclose(script.recency_fit(data, 300, 2, float("inf")), plain, atol=1e-10)
    assert torch.allclose(huber_solve(lambda: script.rows(data), 1e9), plain, atol=1e-10)


def test_weights_scale_each_rows_share_of_the_normal_equations() -> None:
    features = torch.tensor([[1.0, 0.0], [0.0, 2.0], [1.0, 1.0]], dtype=torch.float64)
    targets = torch.tensor([[3.0], [4.0], [5.0]], dtype=torch.float64)
    w = torch.tensor([0.5, 2.0, 0.0], dtype=torch.float64)
    gram, cross, total = normal_equations([(features, targets)], lambda f, t: w)
    # sum over rows of w_i f_i f_i' and w_i f_i t_i, by hand
    assert torch.allclose(gram, torch.tensor([[0.5, 0.0], [0.0, 8.0]], dtype=torch.float64))
    assert torch.allclose(cross, torch.tensor([[1.5], [16.0]], dtype=torch.float64))
    assert total == 2.5


def test_recency_weights_follow_the_half_life() -> None:
    script = load_script()
    weights = script.recency_weights(8, start=126, channels=2, n_windows=130, half_life=10.0)
    # rows window-major: windows 126, 126, 127, 127, ..., 129, 129 (the last)
    assert weights[-1] == 1.0 and weights[-2] == 1.0
    assert weights[0] == pytest.approx(0.5 ** 0.3)
    assert script.recency_weights(2, 0, 2, 130, 10.0)[0] == pytest.approx(0.5 ** 12.9)
    # across batches the fit counts windows on: a half-life of 10 windows weighs the last 10
    # of 130 windows far more than the plain fit does, so the two solutions differ
    data = regression_batches(130, outliers=True)
    recent = script.recency_fit(data, 130, 2, 10.0)
    assert not torch.allclose(recent, solve(*normal_equations(script.rows(data))), atol=1e-3)


def test_robust_fit_resists_gross_errors_the_plain_fit_follows() -> None:
    script = load_script()
    dirty, clean = regression_batches(600, outliers=True), regression_batches(600)
    truth = solve(*normal_equations(script.rows(clean)))
    plain = solve(*normal_equations(script.rows(dirty)))
    robust = huber_solve(lambda: script.rows(dirty), 1.0)
    assert (robust - truth).abs().max() < 0.2 * (plain - truth).abs().max()
    # starting from a plain fit solved elsewhere gives the same answer
    assert torch.equal(huber_solve(lambda: script.rows(dirty), 1.0, plain=plain), robust)


def test_period_map_of_period_one_is_the_full_fit() -> None:
    script = load_script()
    gen = torch.Generator().manual_seed(1)
    features = torch.randn(300, 13, dtype=torch.float64, generator=gen)  # L = 12, plus std
    targets = torch.randn(300, 8, dtype=torch.float64, generator=gen)
    gram, cross, count = normal_equations([(features, targets)])
    full = solve(gram, cross, count)
    # with one-step periods every output step is its own block over every lag: no sharing
    assert torch.allclose(script.period_solve(gram, cross, count, 1, 0), full, atol=1e-10)
    # the robust fit takes the same solver through `solver`
    rows = [(features, targets)]
    robust = huber_solve(lambda: rows, 0.5)
    period_one = huber_solve(lambda: rows, 0.5,
                             solver=lambda g, c, n: script.period_solve(g, c, n, 1, 0))
    assert torch.allclose(period_one, robust, atol=1e-10)


def test_period_map_shares_weights_across_phases_and_solves_the_restricted_problem() -> None:
    script = load_script()
    lookback, horizon, period = 12, 8, 4
    gen = torch.Generator().manual_seed(2)
    features = torch.randn(500, lookback + 1, dtype=torch.float64, generator=gen)
    targets = torch.randn(500, horizon, dtype=torch.float64, generator=gen)
    gram, cross, count = normal_equations([(features, targets)])
    sparse = script.period_solve(gram, cross, count, period, 0)
    # offset 0 (SparseTSF): output step t reads only inputs a whole number of periods back
    lag = lookback + torch.arange(horizon)[None, :] - torch.arange(lookback)[:, None]
    assert torch.all(sparse[:lookback][lag % period != 0] == 0)
    assert torch.all(sparse[:lookback][lag % period == 0] != 0)
    banded = script.period_solve(gram, cross, count, period, 1)
    weights = banded[:lookback]
    # one convolution per block: moving the output one phase on moves the weights one step on
    for t in range(horizon):
        if t % period != period - 1:
            assert torch.allclose(weights[1:, t + 1], weights[:-1, t], atol=1e-12)
    # the restricted least squares, by brute force over the map's free entries: each weight
    # and each free bias is one column of a design matrix acting on every row's features
    lags = script.period_lags(lookback, period, 1)
    slot = {(k, int(u)): i for i, (k, u) in enumerate(
        (k, u) for k in range(horizon // period) for u in lags)}
    n_free = len(slot) + horizon
    embed = torch.zeros((lookback + 1) * horizon, n_free, dtype=torch.float64)
    shares = torch.zeros(n_free, dtype=torch.float64)
    for t in range(horizon):
        k, j = divmod(t, period)
        for s in range(lookback):
            if (k, lookback + j - s) in slot:
                embed[s * horizon + t, slot[k, lookback + j - s]] = 1
                shares[slot[k, lookback + j - s]] += 1
        embed[lookback * horizon + t, len(slot) + t] = 1
    design = torch.kron(features, torch.eye(horizon, dtype=torch.float64)) @ embed
    penalty = torch.diag(1e-3 * count * shares)
    free = torch.linalg.solve(design.T @ design + penalty, design.T @ targets.reshape(-1))
    assert torch.allclose((embed @ free).reshape(lookback + 1, horizon), banded, atol=1e-9)


def test_period_rows_score_the_structured_fits(data_dir: Path) -> None:
    result = rows_of(run(data_dir, "--check", "period", "--lookbacks", "48", "--offsets", "0",
                         "12", "--delta", "0.5"))
    assert set(result) == {(48, "shipped"), (48, "Huber rows, delta 0.5"),
                           (48, "period 24, offset 0, Huber rows, delta 0.5"),
                           (48, "period 24, offset 12, Huber rows, delta 0.5")}
    assert len(set(result.values())) == 4


@pytest.mark.parametrize("args, named", [
    (["--check", "ridge", "--lookbacks", "800"], "--lookbacks"),
    (["--check", "ridge", "--train-rows", "1000"], "--train-rows"),
    (["--check", "band", "--lookbacks", "48", "--bands", "30"], "--bands"),
    (["--check", "ridge", "--ridges", "nan"], "--ridges"),
    (["--check", "ridge", "--ridges", "-1"], "--ridges"),
    (["--check", "robust", "--deltas", "0"], "--deltas"),
    (["--check", "robust", "--deltas", "nan"], "--deltas"),
    (["--check", "robust", "--deltas"], "--deltas"),
    (["--check", "recency", "--half-lives", "inf"], "--half-lives"),
    (["--check", "rank", "--ranks", "0"], "--ranks"),
    (["--check", "rank", "--ranks", "x"], "--ranks"),
    (["--check", "rank", "--delta", "nan"], "--delta"),
    (["--check", "rank", "--delta", "-1"], "--delta"),
    (["--check", "robust", "--delta", "0.5"], "--delta: only the rank and period checks"),
    (["--check", "period", "--period", "7"], "--period: must be at least 1 and divide the horizon"),
    (["--check", "period", "--period", "0"], "--period"),
    (["--check", "period", "--offsets", "13"], "--offsets: each must be between 0 and period"),
    (["--check", "period", "--offsets", "-1"], "--offsets"),
    (["--check", "rank", "--ranks", "96", "1000000"], "--ranks: none is below the horizon (96)"),
    (["--check", "recency", "--half-lives", "-5"], "--half-lives"),
    (["--check", "period", "--level"], "--level: the period check maps the lookback alone"),
    (["--check", "ridge", "--train-rows", "99999999999"], "--train-rows: 8640"),
])
def test_bad_arguments_are_refused_by_name(data_dir: Path, args: list[str], named: str) -> None:
    proc = run(data_dir, *args)
    assert proc.returncode == 2
    assert named in proc.stderr


def test_missing_data_file_names_the_path_and_the_flag(tmp_path: Path) -> None:
    proc = run(tmp_path, "--check", "ridge")
    assert proc.returncode == 1
    assert f"{tmp_path / 'ETTh1.csv'} not found; pass --data-dir" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_malformed_data_file_gets_the_data_error_not_a_traceback(tmp_path: Path) -> None:
    (tmp_path / "ETTh1.csv").write_text("date,a\nnot a date,1\n")
    proc = run(tmp_path, "--check", "ridge", "--lookbacks", "48")
    assert proc.returncode == 3  # DataError's exit code
    assert proc.stderr.startswith("error: ")
    assert "Traceback" not in proc.stderr
