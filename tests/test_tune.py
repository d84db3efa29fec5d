"""`forecast tune`: a sweep on the demo data as one parent run with nested trial runs."""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

import optuna
import pytest
from mlflow import MlflowClient

from forecast.cli import demo_config_path, duration_minutes, main
from forecast.config import Range, load_config
from forecast.errors import ConfigError
from forecast.runner import load_data
from forecast.tune import (
    check_space,
    data_space,
    lookback_candidates,
    sample,
    trial_config,
    tuned_config,
)

FAST = ["--set", "train.epochs=2", "--set", "train.max_windows_per_epoch=512",
        "--set", "train.num_threads=1", "--set", "train.progress=false",
        "--set", "eval.linear_max_windows=500",
        # a width range on a log scale failed every trial: it drew widths such as 10 that the
        # 4 heads do not divide
        "--set", "tune.space={model.d_model: {low: 6, high: 20, log: true}, "
                 "train.lr: {low: 1e-3, high: 1e-2, log: true}}"]


@pytest.mark.slow
def test_four_trials_make_one_parent_and_four_children_scored_on_validation_only(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    code = main(["tune", "--config", str(demo_config_path()), "--trials", "4", "--tracking-uri",
                 uri, "--set", "tracking.experiment=sweep", *FAST])
    out = capsys.readouterr().out
    assert code == 0, out
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    exp = client.get_experiment_by_name("sweep")
    all_runs = client.search_runs([exp.experiment_id])
    parents = [r for r in all_runs if r.data.tags.get("tune.sweep") == "true"]
    assert len(parents) == 1
    parent = parents[0]
    children = [r for r in all_runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert len(children) == 4 and len(all_runs) == 5
    assert sorted(r.data.tags["tune.trial"] for r in children) == ["0", "1", "2", "3"]
    complete = [r for r in children if r.data.tags["tune.state"] == "complete"]
    assert complete, "at least the first two trials always complete (pruner start-up)"
    best = min(complete, key=lambda r: r.data.metrics["val_mse"])
    assert parent.data.tags["tune.best_run_id"] == best.info.run_id
    assert parent.data.metrics["val_mse"] == pytest.approx(best.data.metrics["val_mse"])
    for key in ("model.d_model", "train.lr", "train.epochs"):
        assert parent.data.params[key] == best.data.params[key]
    assert parent.data.metrics["trials_complete"] + parent.data.metrics["trials_pruned"] == 4
    # The test split is never scored while choosing, and no score is named as if it were.
    assert not any(k.startswith(("test_", "baseline_", "skill_"))
                   for r in all_runs for k in r.data.metrics)
    assert parent.data.metrics["val_skill_naive"] == pytest.approx(
        best.data.metrics["val_skill_naive"])
    assert all(r.info.status == "FINISHED" for r in all_runs)
    # No trial registers a model.
    assert client.search_registered_models() == []
    assert f"best: trial {parent.data.tags['tune.best_trial']}" in out


def test_a_space_key_that_is_no_setting_is_rejected_by_name(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    code = main(["tune", "--config", str(demo_config_path()), "--trials", "1", "--tracking-uri",
                 uri, "--set", "tune.space={model.nope: [1, 2]}"])
    assert code == 2
    assert "model.nope: unknown key" in capsys.readouterr().err
    code = main(["tune", "--config", str(demo_config_path()), "--set", "tune.sampler=grid",
                 "--tracking-uri", uri, "--set", "tune.space={train.lr: {low: 1e-3, high: 1e-2}}"])
    assert code == 2
    assert "tune.sampler 'grid' needs a list of choices" in capsys.readouterr().err
    code = main(["tune", "--config", str(demo_config_path()), "--set", "tune.sampler=grid",
                 "--tracking-uri", uri])
    assert code == 2
    assert "tune.sampler 'grid' needs tune.space given as lists" in capsys.readouterr().err
    code = main(["tune", "--config", str(demo_config_path()), "--trials", "1", "--tracking-uri",
                 uri, "--set", "tracking.enabled=false"])
    assert code == 2  # it was ignored: the sweep logged its trials all the same
    assert "tracking.enabled is false: a sweep records its trials" in capsys.readouterr().err
    code = main(["tune", "--config", str(demo_config_path()), "--trials", "3", "--tracking-uri",
                 uri, "--set", "windows.lookback=9000", *FAST[-2:]])
    assert code == 2  # it used to run (and fail) every trial, then exit 4
    assert "windows.lookback (9000) + windows.horizon" in capsys.readouterr().err
    assert not (tmp_path / "mlflow.db").exists()  # rejected before any run was started


def test_ranges_are_sampled_as_the_setting_is_typed() -> None:
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    space = {"train.pad_augment": Range(low=0, high=1),  # a float: it was sampled as 0 or 1
             "model.d_model": Range(low=16, high=64, log=True),  # an int: it was a float
             "train.lr": Range(low=1e-4, high=1e-2, log=True)}
    drawn = [sample(study.ask(), space) for _ in range(20)]
    assert all(isinstance(d["model.d_model"], int) and 16 <= d["model.d_model"] <= 64
               for d in drawn)
    pads = [d["train.pad_augment"] for d in drawn]
    assert all(isinstance(v, float) and 0 <= v <= 1 for v in pads)
    assert len({round(v, 6) for v in pads}) == 20  # not only 0 and 1
    assert all(1e-4 <= d["train.lr"] <= 1e-2 for d in drawn)


def test_a_width_range_is_rounded_to_a_multiple_of_the_trials_heads() -> None:
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    drawn = [sample(study.ask(), {"model.d_model": Range(low=10, high=64, log=True)}, 4)
             for _ in range(30)]
    widths = [d["model.d_model"] for d in drawn]
    assert all(w % 4 == 0 and 12 <= w <= 64 for w in widths)
    assert len(set(widths)) >= 5
    space = {"model.n_heads": Range(low=2, high=8), "model.d_model": Range(low=8, high=40)}
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    drawn = [sample(study.ask(), space, 4) for _ in range(60)]
    assert {d["model.n_heads"] for d in drawn} == set(range(2, 9))
    assert all(d["model.d_model"] % d["model.n_heads"] == 0 and 8 <= d["model.d_model"] <= 40
               for d in drawn)
    # each allowed width equally likely: rounding a drawn width gave the range's ends half
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    counts = Counter(sample(study.ask(), {"model.d_model": Range(low=8, high=40)}, 8)
                     ["model.d_model"] for _ in range(2000))
    assert sorted(counts) == [8, 16, 24, 32, 40]
    assert min(counts.values()) > 0.8 * max(counts.values())


@pytest.mark.parametrize(("space", "message"), [
    ("{model.d_model: {low: 8.5, high: 32}}",  # the probe of each end catches it
     "tune.space: model.d_model: Input should be a valid integer, got a number with a "
     "fractional part"),
    ("{model.d_model: {low: 9, high: 11}}",
     "tune.space: model.d_model's range [9, 11] holds no multiple of the config's "
     "model.n_heads 4; widen it"),
    ("{model.d_model: [16, 24], model.n_heads: [3, 4]}",  # each alone is valid with the other's
     "tune.space: model.d_model 16 with model.n_heads 3 makes no model (d_model must be "
     "divisible by n_heads)"),
    ("{model.d_model: [12, 24], model.n_heads: {low: 3, high: 6}}",  # it blamed d_model 64
     "tune.space: model.d_model 12 with model.n_heads 5 makes no model"),
    ("{model.n_heads: {low: 1, high: 8}}",
     "tune.space: the config's model.d_model 32 with model.n_heads 3 makes no model"),
    ("{model.n_heads: {low: 1, high: 100000000}}",  # it would have listed 10^8 head counts
     "model.n_heads: Input should be less than or equal to 64"),
    ("{data.columns: [[load_0], [load_1]]}",
     "data.columns: data settings cannot be searched (every trial trains on the data read once)"),
])
def test_a_space_the_sweep_would_misread_is_refused(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], space: str, message: str) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    code = main(["tune", "--config", str(demo_config_path()), "--trials", "1", "--tracking-uri",
                 uri, "--set", f"tune.space={space}"])
    assert code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "mlflow.db").exists()


def test_a_width_range_searched_with_a_heads_range_is_accepted() -> None:
    # a range's ends are floats: the heads 2.0 .. 6.0 were probed against the config's width
    cfg = load_config(demo_config_path(), [
        "tune.space={model.d_model: {low: 12, high: 96}, model.n_heads: {low: 2, high: 6}}"])
    check_space(cfg)


def test_tune_takes_no_output_dir(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:  # it was accepted and ignored
        main(["tune", "--config", str(demo_config_path()), "--output-dir", "/tmp/x"])
    assert exit_info.value.code == 2
    assert "unrecognized arguments: --output-dir" in capsys.readouterr().err


@pytest.mark.slow
def test_a_sweep_with_no_trial_complete_fails_its_parent_run(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    code = main(["tune", "--config", str(demo_config_path()), "--trials", "2", "--tracking-uri",
                 uri, "--set", "tracking.experiment=doomed", *FAST[:-2], "--set",
                 "train.grad_clip=null", "--set", "tune.space={train.lr: [1e30, 1e31]}"])
    captured = capsys.readouterr()
    assert code == 4
    assert "Traceback" not in captured.err  # Optuna printed one per failed trial
    assert "trial 0 failed: TrainingError" in captured.err
    assert "error: no trial completed in" in captured.err
    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name("doomed")
    runs = client.search_runs([exp.experiment_id])
    [parent] = [r for r in runs if r.data.tags.get("tune.sweep") == "true"]
    assert parent.info.status == "FAILED"  # it was FINISHED
    assert parent.data.tags["error"] == "no trial completed (2 tried)"
    assert sorted(r.info.status for r in runs if r is not parent) == ["FAILED", "FAILED"]


@pytest.mark.parametrize("value", ["-1", "0", "nan", "soon", "inf", "5x", "m"])
def test_the_budget_must_be_a_positive_duration(
        value: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["tune", "--config", str(demo_config_path()), "--budget", value])
    assert exit_info.value.code == 2
    assert "--budget" in capsys.readouterr().err


@pytest.mark.parametrize("text, minutes", [("30m", 30), ("90s", 1.5), ("1.5h", 90), ("30", 30),
                                           ("2H", 120)])
def test_a_budget_reads_as_minutes(text: str, minutes: float) -> None:
    assert duration_minutes(text) == pytest.approx(minutes)


@pytest.mark.parametrize("season, rows, expected", [
    (24, 8640, [96, 168, 336]),  # hourly: 4 days, a week, two weeks
    (96, 34560, [384, 672, 720]),  # 15-minute: two weeks is over the cap
    (7, 700, [49, 98]),  # daily: 7 and 14 weeks (4 are under two patches)
    (24, 400, [96, 100]),  # short: at most a quarter of the training rows
    (1, 5000, [48, 96, 192]),  # a frequency without a season
])
def test_lookback_candidates_follow_the_season_within_what_the_data_allows(
        season: int, rows: int, expected: list[int]) -> None:
    assert lookback_candidates(season, rows, patch_len=16) == expected


def test_too_few_training_rows_for_any_lookback_name_the_fix() -> None:
    with pytest.raises(ConfigError, match=r"the 100 training rows leave no lookback to search "
                       r"\(at most 25 steps, at least 2 x model.patch_len 16\)"):
        lookback_candidates(24, 100, patch_len=16)


def test_the_data_space_searches_the_skip_width_rate_and_dropout_and_says_why() -> None:
    cfg = load_config(demo_config_path())
    space = data_space(cfg, load_data(cfg))
    assert list(space.keys) == ["windows.lookback", "model.skip", "model.d_model", "train.lr",
                                "model.dropout"]
    assert space.keys["model.skip"] == ["off", "least_squares", "robust"]
    rows = int(8760 * cfg.split.train)  # the demo's year of hourly rows
    assert space.reason == ("lookback candidates [96, 168, 336] (h data: season 24 steps, "
                            f"{rows} training rows)")
    # each skip choice makes a valid config, and the robust one is robust
    robust = tuned_config(cfg, {"model.skip": "robust"})
    assert robust.model.skip_huber_delta == 0.1 and robust.model.linear_skip
    assert not tuned_config(cfg, {"model.skip": "off"}).model.linear_skip


def test_a_trial_trains_on_a_capped_share_of_windows_but_the_tuned_config_does_not() -> None:
    cfg = load_config(demo_config_path(), ["tune.trial_windows_per_epoch=1000"])
    assert trial_config(cfg, {}, "scratch").train.max_windows_per_epoch == 1000
    assert tuned_config(cfg, {}).train.max_windows_per_epoch is None
    smaller = load_config(demo_config_path(), ["tune.trial_windows_per_epoch=1000",
                                               "train.max_windows_per_epoch=500"])
    assert trial_config(smaller, {}, "scratch").train.max_windows_per_epoch == 500


@pytest.mark.slow
def test_a_sweep_on_the_data_space_ends_within_its_budget_and_writes_the_tuned_config(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tuned = tmp_path / "tuned.yaml"
    started = time.monotonic()
    code = main(["tune", "--config", str(demo_config_path()), "--budget", "20s",
                 "--tracking-uri", uri, "--write-config", str(tuned),
                 "--set", "tracking.experiment=budget", *FAST[:-2],
                 "--set", "train.epochs=50", "--set", "model.n_layers=1"])
    seconds = time.monotonic() - started
    out = capsys.readouterr().out
    assert code == 0, out
    assert "space chosen from the data: lookback candidates [96, 168, 336]" in out
    # no trial starts after 20 s, and a running one stops at its next batch
    assert seconds < 20 + 45, seconds
    client = MlflowClient(tracking_uri=uri)
    runs = client.search_runs([client.get_experiment_by_name("budget").experiment_id])
    [parent] = [r for r in runs if r.data.tags.get("tune.sweep") == "true"]
    children = [r for r in runs if r is not parent]
    assert 1 <= len(children) < 100
    assert all("model.skip" not in r.data.params for r in children)  # its settings instead
    assert {r.data.tags.get("tune.reason", "") for r in children if r.data.tags[
        "tune.state"] == "pruned"} <= {""} | {r.data.tags.get("tune.reason") for r in children}
    best = load_config(tuned)
    assert best.windows.lookback == int(parent.data.params["windows.lookback"])
    assert best.train.epochs == 50 and best.train.max_windows_per_epoch == 512
    assert f"forecast train --config {tuned}" in out
def test_a_checkpoint_dir_a_sweep_does_not_use_is_named(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["tune", "--config", str(demo_config_path()), "--tracking-uri",
                 f"sqlite:///{tmp_path / 'mlflow.db'}", "--set",
                 f"train.checkpoint_dir={tmp_path / 'ckpt'}",
                 "--set", "windows.lookback=9000", *FAST[-2:]])  # stops before any trial
    assert code == 2
    assert "train.checkpoint_dir is not used by a sweep" in capsys.readouterr().err


def test_a_write_config_path_that_cannot_be_written_fails_before_the_search(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["tune", "--config", str(demo_config_path()), "--tracking-uri",
                 f"sqlite:///{tmp_path / 'mlflow.db'}", "--write-config", str(tmp_path)])
    assert code == 2
    assert f"--write-config {str(tmp_path)!r} is a folder; give a file name" in \
        capsys.readouterr().err
    assert not (tmp_path / "mlflow.db").exists()  # no run was started


@pytest.mark.slow
def test_trials_sharing_a_lookback_solve_the_skip_once_and_reuse_it(
        tmp_path: Path, capsys: pytest.CaptureFixture[str],
        caplog: pytest.LogCaptureFixture) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    caplog.set_level("INFO")
    code = main(["tune", "--config", str(demo_config_path()), "--tracking-uri", uri,
                 "--set", "tracking.experiment=reuse", *FAST[:-2], "--set", "tune.sampler=grid",
                 "--set", "tune.prune=false",
                 "--set", "tune.space={windows.lookback: [48, 96], model.d_model: [8, 16]}"])
    assert code == 0, capsys.readouterr().out
    messages = [r.getMessage() for r in caplog.records]
    # four trials, two lookbacks: each lookback's skip is solved once, then found
    assert sum(m.startswith("solving the linear skip by least squares") for m in messages) == 2
    assert sum(m.startswith("linear skip: the solution already found") for m in messages) == 2
    client = MlflowClient(tracking_uri=uri)
    runs = client.search_runs([client.get_experiment_by_name("reuse").experiment_id])
    trials = [r for r in runs if "tune.trial" in r.data.tags]
    assert len(trials) == 4
    by_lookback: dict[str, set[float]] = {}
    for r in trials:
        by_lookback.setdefault(r.data.params["windows.lookback"], set()).add(
            r.data.metrics["linear_skip_val_loss"])
    # the skip alone scores the same for both widths of a lookback, and differs between them
    assert {k: len(v) for k, v in by_lookback.items()} == {"48": 1, "96": 1}
    assert len(set.union(*by_lookback.values())) == 2
