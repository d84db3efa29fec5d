"""Every script under benchmarks/ in a seconds-long smoke mode, in a subprocess: it exits 0,
prints one JSON object (or list) as its last stdout line, and saves it through
benchmarks/record.py with the commit, date and machine. ett.py, seed_average.py and
head_scale.py run as one chain (the last two score the models ett.py saved):
`test_ett_seed_average_and_head_scale`. Every run writes its results file under tmp_path,
never into benchmarks/results/."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from forecast.synthetic import synthetic_frame

ROOT = Path(__file__).resolve().parent.parent
BENCHMARKS = ROOT / "benchmarks"
ETTH = BENCHMARKS / "ett.py"


def etth_csv(folder: Path, seed: int = 3) -> Path:
    """An ETTh1-shaped file in `folder`: 14400 hourly rows (the protocol's train, validation
    and test blocks) of 7 channels."""
    synthetic_frame(n_rows=14400, n_channels=7, seed=seed).to_csv(folder / "ETTh1.csv",
                                                                  index=False)
    return folder


def run_script(script: str, results: Path, *args: str, timeout: float = 600
               ) -> subprocess.CompletedProcess:
    """benchmarks/<script> with `args`, saving its results to `results`."""
    return subprocess.run([sys.executable, str(BENCHMARKS / script), *args,
                           "--results", str(results)],
                          capture_output=True, text=True, timeout=timeout, cwd=ROOT)


def recorded(proc: subprocess.CompletedProcess, results: Path, benchmark: str) -> Any:
    """Assert the run succeeded and saved what it printed last; return that."""
    assert proc.returncode == 0, proc.stderr[-3000:]
    last = json.loads(proc.stdout.strip().splitlines()[-1])
    assert isinstance(last, dict | list)
    saved = json.loads(results.read_text())
    assert saved["benchmark"] == benchmark
    assert saved["results"] == last
    assert saved["commit"] is None or len(saved["commit"].removesuffix("+dirty")) == 40
    assert saved["date"].endswith("Z") and saved["date"][:2] == "20"
    assert set(saved["machine"]) == {"cores", "cpu", "gpu", "memory_gb", "load_average_1m"}
    assert saved["machine"]["cores"] >= 1
    assert saved["command"].startswith(f"python benchmarks/{benchmark}.py ")
    return last


def run_etth(data_dir: Path, out_dir: Path, *extra: str) -> subprocess.CompletedProcess:
    """One quick cell of ett.py (ETTh1, H=96, L=96, one short epoch)."""
    return run_script("ett.py", out_dir / "ett.json", "--dataset", "ETTh1", "--horizon", "96",
                      "--data-dir", str(data_dir), "--output-dir", str(out_dir),
                      "--set", "train.epochs=1", "--set", "train.max_windows_per_epoch=64",
                      "--set", "windows.lookback=96", "--set", "eval.linear_max_windows=500",
                      *extra)


def on_saved_models(script: str, out_dir: Path, data_dir: Path) -> Any:
    """A script that scores the models ett.py saved (seeds 0 and 1), run to success."""
    results = out_dir / f"{script}.json"
    proc = run_script(script, results, "--dataset", "ETTh1", "--output-dir", str(out_dir),
                      "--seeds", "0", "1", "--data-dir", str(data_dir))
    return proc, recorded(proc, results, script.removesuffix(".py"))


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return etth_csv(tmp_path_factory.mktemp("etth"))


def test_windows_smoke(tmp_path: Path) -> None:
    proc = run_script("windows.py", tmp_path / "w.json", "--rows", "20000", "--lookback", "96",
                      "--horizon", "24")
    result = recorded(proc, tmp_path / "w.json", "windows")
    assert result["rows"] == 20000 and result["windows"] > 0
    assert set(result) >= {"added_rss_mb", "materialised_copy_gb", "seconds", "batches"}


def test_linear_checks_smoke(tmp_path: Path, data_dir: Path) -> None:
    proc = run_script("linear_checks.py", tmp_path / "l.json", "--dataset", "ETTh1",
                      "--horizon", "96", "--check", "ridge", "--lookbacks", "48", "--ridges", "1",
                      "--data-dir", str(data_dir))
    rows = recorded(proc, tmp_path / "l.json", "linear_checks")
    assert {r["variant"] for r in rows} == {"shipped", "ridge 1"}
    assert all(set(r) >= {"dataset", "horizon", "lookback", "val_mse"} for r in rows)


@pytest.mark.slow
def test_batch_forecast_smoke(tmp_path: Path) -> None:
    proc = run_script("batch_forecast.py", tmp_path / "b.json", "--series", "50", "--rows", "300",
                      "--workdir", str(tmp_path / "work"))
    result = recorded(proc, tmp_path / "b.json", "batch_forecast")
    assert [(r["engine"], r["series_forecast"]) for r in result["runs"]] == [("local", 50),
                                                                             ("spark", 50)]
    spark = result["runs"][1]
    assert spark["peak_rss_mb"]["jvm"] > 0 and spark["peak_rss_mb"]["python_workers"] > 0
    assert spark["model_loads"] >= 1 and result["max_abs_diff"] < 1e-4


@pytest.mark.slow
def test_distributed_smoke(tmp_path: Path) -> None:
    # the demo's data with a small model: one short epoch at 1 and at 2 torchrun ranks
    config = tmp_path / "small.yaml"
    config.write_text(f"extends: {ROOT / 'pipelines' / 'configs' / 'demo.yaml'}\n"
                      "windows: {lookback: 24, horizon: 6}\n"
                      "model: {patch_len: 8, patch_stride: 4, d_model: 8, n_heads: 2, "
                      "n_layers: 1, d_ff: 16}\n"
                      "eval: {linear_max_windows: 500}\n")
    proc = run_script("distributed.py", tmp_path / "d.json", "--config", str(config),
                      "--epochs", "1", "--max-windows", "256")
    result = recorded(proc, tmp_path / "d.json", "distributed")
    assert [r["procs"] for r in result["runs"]] == [1, 2]
    assert all(r["windows_per_second"] > 0 for r in result["runs"])
    # one model, whatever the rank count: the same least-squares start, the same scores
    assert result["runs"][0]["params"] == result["runs"][1]["params"]


@pytest.mark.slow
def test_serving_smoke(tmp_path: Path, data_dir: Path) -> None:
    # a small model (L=48, one layer of d_model 8) trained and scored on the first 1600 rows,
    # our service only, at most a second per load level
    proc = run_script("serving.py", tmp_path / "s.json", "--data-dir", str(data_dir),
                      "--requests", "10", "--batch-requests", "2", "--seconds", "1",
                      "--skip-mlflow", "--set", "windows.lookback=48", "--set", "model.d_model=8",
                      "--set", "model.n_layers=1", "--set", "model.d_ff=16",
                      "--set", "train.max_windows_per_epoch=256",
                      "--set", "eval.linear_max_windows=500", "--set", "split.train=1000",
                      "--set", "split.val=300", "--set", "split.test=300")
    result = recorded(proc, tmp_path / "s.json", "serving")
    assert set(result) == {"ours_1w", "ours_2w"}
    assert set(result["ours_1w"]) == {"c1", "c16", "c64", "c1q3", "batch256"}
    for level in (v for server in result.values() for v in server.values()):
        assert set(level) == {"p50_ms", "p95_ms", "p99_ms", "rps", "errors"}
        assert level["errors"] == 0 and level["rps"] > 0


def test_soak_smoke(tmp_path: Path, data_dir: Path) -> None:
    # three 4-second "minutes" against a small model; the alias moves at 4 s and 8 s
    proc = run_script("soak.py", tmp_path / "soak.json", "--data-dir", str(data_dir),
                      "--minutes", "3", "--minute-seconds", "4", "--reload-interval", "1",
                      "--set", "windows.lookback=48", "--set", "model.d_model=8",
                      "--set", "model.n_layers=1", "--set", "model.d_ff=16",
                      "--set", "train.max_windows_per_epoch=256",
                      "--set", "eval.linear_max_windows=500", "--set", "split.train=1000",
                      "--set", "split.val=300", "--set", "split.test=300")
    result = recorded(proc, tmp_path / "soak.json", "soak")
    assert [m["minute"] for m in result["minutes"]] == [1, 2, 3]
    assert result["errors"] == 0 and all(m["requests"] > 0 for m in result["minutes"])
    # the served version follows the alias: 1, then 2, then 1 again
    assert [m["version"] for m in result["minutes"]] == ["1", "2", "1"]
    assert [m["version"] for m in result["alias_moves"]] == ["2", "1"]
    assert result["rss_end_mb"] > 0


def test_defaults_smoke(tmp_path: Path, data_dir: Path) -> None:
    proc = run_script("defaults.py", tmp_path / "d.json", "--candidates", "encoder",
                      "skip-robust", "--datasets", "ETTh1", "--data-dir", str(data_dir),
                      "--scratch", str(tmp_path / "scratch"), "--set", "train.epochs=1",
                      "--set", "train.max_windows_per_epoch=64", "--set", "windows.lookback=96",
                      "--set", "eval.linear_max_windows=500")
    rows = recorded(proc, tmp_path / "d.json", "defaults")
    assert [(r["candidate"], r["dataset"], r["horizon"]) for r in rows] == [
        ("encoder", "ETTh1", 96), ("skip-robust", "ETTh1", 96)]
    encoder, robust = rows
    assert encoder["skip_alone_val_loss"] is None and robust["skip_alone_val_loss"] > 0
    # validation only: the baselines scored on the same windows, and never a test score
    assert all(r["val_mse"] > 0 and r["linear_mse"] > 0 for r in rows)
    assert not any(key.startswith("test") for r in rows for key in r)
    assert "vs linear" in proc.stdout


@pytest.mark.slow
def test_ett_seed_average_and_head_scale(data_dir: Path, tmp_path: Path) -> None:
    proc = run_etth(data_dir, tmp_path, "--seeds", "0", "1", "--jobs", "2")
    cell = recorded(proc, tmp_path / "ett.json", "ett")
    lines = proc.stdout.strip().splitlines()
    per_seed = {line.split(":")[0] for line in lines if line.startswith("ETTh1 H=96 seed=")}
    assert per_seed == {"ETTh1 H=96 seed=0", "ETTh1 H=96 seed=1"}
    assert cell["seeds"] == [0, 1]
    assert cell["windows"] == 2880 - 96 + 1  # every stride-1 test window is scored
    assert cell["windows_drop_last"] == (2880 - 96 + 1) // 128 * 128  # PatchTST's loader's
    assert cell["mse_drop_last"] > 0
    assert cell["lookback"] == 96
    seed_mses = [float(line.split("mse ")[1].split()[0]) for line in lines
                 if line.startswith("ETTh1 H=96 seed=")]
    assert sorted(cell["seed_mse"]) == pytest.approx(sorted(seed_mses), abs=1e-4)
    assert cell["mse"] == pytest.approx(sum(seed_mses) / 2, abs=1e-4)
    assert cell["mse_std"] == pytest.approx(abs(seed_mses[0] - seed_mses[1]) / 2, abs=1e-4)
    assert cell["train_windows_per_second"] > 0
    assert 0 < cell["peak_rss_mb"] < 4096
    assert set(cell["baselines"]) >= {"naive", "linear"}
    assert f"{'ETTh1':<6}{96:>5}{96:>5}" in proc.stdout  # table row: data, H, L
    # the skip alone, scored on the same windows: validation keeps nothing worse than it
    # (ETTh1's val metric is the MSE), and the skill is the share of its MSE removed
    assert cell["val_mse"] <= cell["skip_val_mse"] + 1e-5
    assert cell["skill_over_skip"] == pytest.approx(1 - cell["mse"] / cell["skip_mse"], abs=2e-4)
    if cell["best_epochs"] == [0, 0]:  # the skip alone was kept: the encoder added nothing
        assert cell["mse"] == pytest.approx(cell["skip_mse"], abs=1e-6)

    # benchmarks/seed_average.py on the models this run saved
    avg, (averaged,) = on_saved_models("seed_average.py", tmp_path, data_dir)
    line = avg.stdout.strip().splitlines()[0]
    assert line.startswith("ETTh1 H=96: val MSE single ")
    assert averaged["test_mse_single"] == pytest.approx(cell["mse"], abs=1e-4)  # same models
    # squared error is convex in the forecast
    assert averaged["test_mse_averaged"] <= averaged["test_mse_single"] + 1e-6

    # benchmarks/head_scale.py on the same models: at a = 1 it scores what seed_average does
    _, (scaled,) = on_saved_models("head_scale.py", tmp_path, data_dir)
    assert scaled["val_mse_shipped"] == pytest.approx(averaged["val_mse_single"], abs=1e-4)
    # the best a in [0, 2] beats 0 and 1
    assert scaled["val_mse_hindsight"] <= min(scaled["val_mse_shipped"],
                                              scaled["val_mse_linear"]) + 1e-4
    assert len(scaled["scales"]) == 2


def load_render() -> Any:
    spec = importlib.util.spec_from_file_location("render", ROOT / "docs" / "render.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_generated_docs_are_current() -> None:
    # the tables in docs/ come from benchmarks/results/ and the config models, never by hand
    proc = subprocess.run([sys.executable, str(ROOT / "docs" / "render.py"), "--check"],
                          capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr


def test_render_check_names_stale_files_and_fills_the_readme_block(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    render = load_render()
    monkeypatch.setattr(render, "GENERATED", tmp_path / "generated")
    monkeypatch.setattr(render, "CONFIG_REFERENCE", tmp_path / "config-reference.md")
    readme = tmp_path / "README.md"
    readme.write_text("# x\n<!-- table:headline -->\nold\n<!-- /table:headline -->\nafter\n")
    monkeypatch.setattr(render, "README", readme)
    monkeypatch.setattr(render, "ROOT", tmp_path)

    assert render.main(["--check"]) == 1  # nothing written yet: every file is stale
    assert not (tmp_path / "generated").exists()
    assert render.main([]) == 0
    assert render.main(["--check"]) == 0
    text = readme.read_text()
    assert "old" not in text and text.endswith("<!-- /table:headline -->\nafter\n")
    assert "| ETTh1 | 96 |" in text

    (tmp_path / "generated" / "ett.md").write_text("edited by hand\n")
    assert render.main(["--check"]) == 1
    readme.write_text("# no markers\n")
    render.main([])
    assert readme.read_text() == "# no markers\n"  # left alone


def test_config_reference_lists_every_key() -> None:
    from forecast.config import Config

    page = (ROOT / "docs" / "config-reference.md").read_text()
    for section, field in Config.model_fields.items():
        assert f"## `{section}`" in page
        for key in getattr(field.annotation, "model_fields", {}):
            assert f"| `{section}.{key}` |" in page
    assert "| `windows.lookback` | int | `336` | > 0, ≤ 2147483647 |" in page


def test_intervals_smoke(tmp_path: Path) -> None:
    proc = run_script("intervals.py", tmp_path / "i.json", "--only", "demo:24",
                      "--set", "train.epochs=1", "--output-dir", str(tmp_path / "runs"))
    (cell,) = recorded(proc, tmp_path / "i.json", "intervals")
    assert (cell["dataset"], cell["horizon"]) == ("demo", 24)
    test = cell["test"]
    assert 0 < test["coverage_80"] < test["coverage_95"] <= 1
    assert 1 <= test["worst_step_80"] <= 24 and test["wql"] > 0 and test["linear_wql"] > 0
    methods = cell["validation_methods"]
    assert set(methods) == {"a_split_conformal", "b_quantile_head", "c_conformal_head",
                            "a_scaled_by_mean_abs_diff", "a_scaled_by_last_24_spread",
                            "a_scaled_by_nothing", "windows"}
    assert all(0 < m["coverage_80"] < 1 and m["wql"] > 0
               for name, m in methods.items() if name != "windows")


def test_backtest_smoke(tmp_path: Path, data_dir: Path) -> None:
    proc = run_script("backtest.py", tmp_path / "bt.json", "--data-dir", str(data_dir),
                      "--counts", "5,20,40", "--step", "24", "--work-dir", str(tmp_path / "w"),
                      "--set", "windows.lookback=96", "--set", "train.epochs=1",
                      "--set", "train.max_windows_per_epoch=256",
                      "--set", "eval.linear_max_windows=500")
    result = recorded(proc, tmp_path / "bt.json", "backtest")
    assert [r["cutoffs"] for r in result["runs"]] == [5, 20, 40]
    assert [r["windows"] for r in result["runs"]] == [5, 20, 40]
    assert all(r["peak_rss_mb"] > 0 for r in result["runs"])
    assert result["rss_ratio_most_to_fewest"] > 0
    assert set(result["runs"][0]["mean_by_cutoff"]) == {"model", "linear", "seasonal_naive"}
