from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from forecast.config import (
    Config,
    apply_overrides,
    build_config,
    dump_config,
    load_config,
)
from forecast.errors import ConfigError


def test_defaults_validate_and_have_documented_values():
    cfg = load_config(None)
    assert cfg == Config()
    assert (cfg.windows.lookback, cfg.windows.horizon, cfg.windows.stride) == (336, 24, 1)
    # the best generic recipe on validation (benchmarks/results/defaults.json and
    # linear_checks.json): the skip solved robustly (Huber delta 0.1) by least squares with the
    # level input, under a small, well-regularised encoder
    model = cfg.model
    assert (model.linear_skip, model.skip_fit, model.skip_level, model.skip_huber_delta) == (
        True, "least_squares", True, 0.1)
    assert (model.d_model, model.n_layers, model.dropout) == (16, 3, 0.3)
    assert (cfg.train.lr, cfg.train.epochs, cfg.train.patience) == (1e-3, 12, 3)
    assert (cfg.split.by, cfg.split.train, cfg.split.val, cfg.split.test) == (
        "fractions", 0.7, 0.1, 0.2)
    assert cfg.data.missing == "error"
    assert cfg.model.d_model % cfg.model.n_heads == 0


def test_unknown_key_is_rejected_by_name():
    with pytest.raises(ConfigError) as err:
        build_config({"train": {"epochz": 3}}, "run.yaml")
    msg = str(err.value)
    assert "run.yaml" in msg
    assert "train.epochz" in msg
    assert "unknown key" in msg and "forecast config" in msg


def test_unknown_top_level_section_is_rejected_by_name():
    with pytest.raises(ConfigError, match=r"trian: unknown key"):
        build_config({"trian": {"epochs": 3}})


def test_patch_longer_than_lookback_names_both_fields():
    with pytest.raises(ConfigError) as err:
        build_config({"windows": {"lookback": 8}, "model": {"patch_len": 16}})
    msg = str(err.value)
    assert "model.patch_len (16)" in msg
    assert "windows.lookback (8)" in msg
    assert "shorten the patch or lengthen the lookback" in msg


def test_d_model_must_be_divisible_by_heads():
    with pytest.raises(ConfigError) as err:
        build_config({"model": {"d_model": 30, "n_heads": 4}})
    msg = str(err.value)
    assert "model.d_model (30)" in msg and "model.n_heads (4)" in msg and "divisible" in msg


def test_min_history_must_lie_between_patch_and_lookback():
    with pytest.raises(ConfigError, match=r"model.min_history \(4\) must lie between "
                                          r"model.patch_len \(16\)"):
        build_config({"model": {"min_history": 4}})
    assert build_config({"model": {"min_history": 32}}).model.min_history == 32


@pytest.mark.parametrize(
    ("split", "fragment"),
    [
        ({"train": 1.5}, "split.train must be a fraction in (0, 1) when by=fractions"),
        ({"val": 0.0}, "split.val must be a fraction in (0, 1) when by=fractions"),
        ({"train": 0.8, "val": 0.2, "test": 0.2}, "split fractions add up to 1.2"),
        ({"by": "rows", "train": 100, "val": -5, "test": 10},
         "split.val must be a positive row count when by=rows"),
        ({"by": "rows", "train": 0.7, "val": 10, "test": 10},
         "split.train must be a positive row count when by=rows"),
        ({"by": "dates", "train": "2024-03-01", "val": "2024-02-01", "test": None},
         "split dates must increase"),
        ({"by": "dates", "train": "not a date", "val": "2024-02-01", "test": None},
         "split.train = 'not a date' is not a date"),
    ],
)
def test_bad_splits_are_rejected(split, fragment):
    with pytest.raises(ConfigError) as err:
        build_config({"split": split})
    assert fragment in str(err.value)


@pytest.mark.parametrize("value", ["maybe", "", "null", ".nan", "2"])
def test_linear_skip_must_be_a_boolean(value):
    with pytest.raises(ConfigError, match="model.linear_skip: Input should be a valid boolean"):
        load_config(None, [f"model.linear_skip={value}"])


def test_valid_splits_of_each_kind():
    assert build_config({"split": {"train": 0.6, "val": 0.2, "test": None}}).split.test is None
    rows = build_config({"split": {"by": "rows", "train": 100, "val": 20, "test": 30}}).split
    assert (rows.train, rows.val, rows.test) == (100, 20, 30)


def test_apply_overrides_parses_values_like_yaml():
    raw = apply_overrides({"train": {"epochs": 3}}, [
        "train.lr=1e-3", "model.d_model=32", "model.revin=false", "train.grad_clip=null",
        "name=exp1", "data.columns=[a, b]",
    ])
    assert raw["train"] == {"epochs": 3, "lr": 0.001, "grad_clip": None}
    assert isinstance(raw["train"]["lr"], float)
    assert raw["model"] == {"d_model": 32, "revin": False}
    assert raw["name"] == "exp1"
    assert raw["data"]["columns"] == ["a", "b"]


def test_load_config_with_overrides(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("name: from-file\ntrain:\n  epochs: 7\n  lr: 1e-2\nmodel:\n  d_model: 16\n")
    cfg = load_config(path, ["train.lr=1e-3", "model.n_heads=2", "train.epochs=9"])
    assert cfg.name == "from-file"
    assert cfg.train.lr == pytest.approx(1e-3) and isinstance(cfg.train.lr, float)
    assert cfg.train.epochs == 9
    assert (cfg.model.d_model, cfg.model.n_heads) == (16, 2)
    # A scientific-notation value in the file itself is a number too.
    assert load_config(path).train.lr == pytest.approx(1e-2)


def test_scientific_notation_split_fraction_override():
    cfg = load_config(None, ["split.train=6e-1", "split.val=1e-1", "split.test=3e-1"])
    assert (cfg.split.train, cfg.split.val, cfg.split.test) == (0.6, 0.1, 0.3)


def test_date_split_overrides_stay_dates_as_text():
    cfg = load_config(None, ["split.by=dates", "split.train=2024-01-10",
                             "split.val=2024-01-12", "split.test=null"])
    assert (cfg.split.train, cfg.split.val, cfg.split.test) == ("2024-01-10", "2024-01-12", None)


def test_override_without_equals_sign_is_rejected():
    with pytest.raises(ConfigError, match=r"must look like section.key=value"):
        load_config(None, ["train.lr"])


def test_override_into_a_non_section_is_rejected():
    with pytest.raises(ConfigError, match=r"'name' is not a section"):
        apply_overrides({"name": "x"}, ["name.sub=1"])


def test_override_with_unknown_key_names_it(tmp_path):
    with pytest.raises(ConfigError, match=r"train.epochz: unknown key"):
        load_config(None, ["train.epochz=1"])
    path = tmp_path / "ok.yaml"
    path.write_text("name: ok\n")
    with pytest.raises(ConfigError) as err:  # the file is fine: the override is not
        load_config(path, ["train.epochz=1"])
    assert f"invalid configuration in {path} with the --set overrides" in str(err.value)


def test_missing_config_file(tmp_path):
    missing = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError) as err:
        load_config(missing)
    assert str(missing) in str(err.value) and "not found" in str(err.value)
    assert err.value.exit_code == 2


def test_config_file_must_be_a_mapping(tmp_path):
    path = tmp_path / "list.yaml"
    path.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match=r"must hold a mapping of sections"):
        load_config(path)


def test_invalid_yaml_file(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("train: [1, 2\n")
    with pytest.raises(ConfigError, match=r"is not valid YAML"):
        load_config(path)


def test_a_key_given_twice_is_refused_naming_it_and_the_line(tmp_path):
    # YAML keeps the last one silently: train.epochs would have gone back to its default
    path = tmp_path / "twice.yaml"
    path.write_text("train:\n  epochs: 1\nmodel:\n  d_model: 32\ntrain:\n  lr: 0.1\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    message = str(err.value)
    assert "key 'train' appears twice in one mapping; keep one" in message
    assert "line 5" in message and "\n" not in message


def test_yaml_merge_keys_still_merge(tmp_path):
    # the duplicate-key check must let `<<: *anchor` through: it is a merge, not a key
    path = tmp_path / "anchors.yaml"
    path.write_text("name: m\nmodel: &m {d_model: 32, n_heads: 4}\ntrain:\n  lr: 0.01\n")
    assert load_config(path).model.d_model == 32
    merged = apply_overrides({}, ["train={<<: {epochs: 3, lr: 0.01}, epochs: 5}"])
    assert merged == {"train": {"epochs": 5, "lr": 0.01}}  # the key after the merge wins


def test_flat_uses_dotted_names():
    flat = build_config({"model": {"d_model": 32}, "name": "x"}).flat()
    assert flat["model.d_model"] == 32
    assert flat["windows.lookback"] == 336
    assert flat["data.path"] is None
    assert flat["name"] == "x"
    assert flat["split.train"] == 0.7
    # Leaves only: no section maps in the values.
    assert not any(isinstance(v, dict) for v in flat.values())
    assert "model" not in flat


def test_dump_config_round_trips(tmp_path):
    cfg = load_config(None, ["train.lr=2e-4", "model.d_model=32", "split.by=dates",
                             "split.train=2024-01-10", "split.val=2024-01-12",
                             "split.test=null"])
    text = dump_config(cfg)
    assert yaml.safe_load(text)["model"]["d_model"] == 32
    path = tmp_path / "dumped.yaml"
    path.write_text(text)
    assert load_config(path) == cfg


@pytest.mark.parametrize(("override", "message"), [
    ("tune.space={train.lr: {low: 0.01, high: 0.001}}",
     "tune.space: train.lr: range low (0.01) must be below high (0.001)"),
    ("tune.space={train.lr: {low: 0, high: 1, log: true}}",
     "tune.space: train.lr: a log range needs low > 0"),
    ("tune.space={train.lr: {low: 0, hi: 1}}", "tune.space: train.lr: high: Field required"),
    ("tune.space={model.d_model: []}", "tune.space: model.d_model: give at least one choice"),
    ("tune.space={tracking.uri: [a]}",
     "tune.space: tracking.uri: only settings that change the model can be searched"),
    ("tune.space={model.d_model: 5}",
     "tune.space: model.d_model: give a list of choices or {low, high, log}"),
    ("tune.space={'': [1]}",  # it was accepted, then blamed on an override '=1' never given
     "tune.space: '' is not a dotted setting; name one such as train.lr"),
    ("tune.space={model.skip: [plain]}",
     "tune.space: model.skip: give a list of off, least_squares, robust"),
    ("tune.space={model.skip: robust}",
     "tune.space: model.skip: give a list of off, least_squares, robust"),
    ("tune.budget_minutes=0", "tune.budget_minutes: Input should be greater than 0"),
    ("tune.budget_minutes=.nan", "tune.budget_minutes: Input should be"),
    ("tune.trial_windows_per_epoch=0",
     "tune.trial_windows_per_epoch: Input should be greater than 0"),
    ("tune.space={split.train: [5000, 5760]}",  # trials were scored on different val blocks
     "tune.space: split.train: give one choice; split settings move the validation block"),
    ("split.train=null",  # it listed pydantic's union: split.train.float: ..., .int:, .str:
     "split.train: is null; give a fraction, a row count or a date as split.by says"),
    ("tune.sampler=grid", "tune.sampler 'grid' needs tune.space given as lists of choices"),
    ("tune.trials=0", "tune.trials: Input should be greater than 0"),
    ("pipeline.max_data_age=-2h", "pipeline.max_data_age must be a positive duration"),
    # each of these used to validate and then fail (or misbehave) deep inside a run
    ("data.columns=[a, b, a]", "data.columns: names ['a'] more than once; list each channel once"),
    ("data.columns=[]", "data.columns: List should have at least 1 item"),
    ("train.seed=-1", "train.seed: Input should be greater than or equal to 0"),
    ("tune.seed=4294967296", "tune.seed: Input should be less than 4294967296"),
    ("tracking.timeout_seconds=.inf", "tracking.timeout_seconds: Input should be a finite number"),
    ("tracking.uri=''", "tracking.uri: is empty: give a URI"),
    ("tracking.registered_model=team/load", "tracking.registered_model 'team/load' cannot name an "
     "MLflow registered model: give a non-blank name without / : ' or \", not starting "
     "with .. (it has /)"),
    ("name=a:b", "name (the registered model's name by default) 'a:b' cannot name an MLflow"),
    ("name=..x", "'..x' cannot name an MLflow registered model"),  # MLflow's path rule
    ("pipeline.max_data_age=nan", "pipeline.max_data_age must be a positive duration"),
    ("pipeline.max_data_age=NaT", "pipeline.max_data_age must be a positive duration"),
    ("pipeline.max_data_age=1000000000D", "is not a duration with a unit (at most about 292"),
    ("train.lr=.nan", "train.lr: Input should be a finite number"),
    ("tracking.timeout_seconds=.nan", "tracking.timeout_seconds: Input should be a finite number"),
    # pydantic reads a boolean as 1 or 0: these trained one epoch, or at lr 1
    ("train.epochs=true", "train.epochs: True is a boolean (YAML reads true, yes and on so), "
     "not a number; give a number"),
    ("train.lr=yes", "train.lr: True is a boolean"),
    ("split.train=on", "split.train: True is a boolean"),
    ("model.skip_rank=false", "model.skip_rank: False is a boolean"),
    ("tune.space={train.lr: {low: true, high: 2}}", "low: True is a boolean"),
    ("tune.space={}", "tune.space: is empty: give at least one setting to search"),
    # an empty path meant "unset": files and locks went to the default place without a word
    ("data.path=''", "data.path: is empty: give a path, or leave the key out for the default"),
    ("output_dir=''", "output_dir: is empty: give a path"),
    ("pipeline.lock_dir=''", "pipeline.lock_dir: is empty: give a path"),
    # a sweep sets these itself for every trial, or they change no score
    ("tune.space={train.checkpoint_dir: [a, b]}", "tune.space: train.checkpoint_dir: only "
     "settings that change the model can be searched"),
    ("tune.space={train.progress: [true, false]}", "tune.space: train.progress: only settings"),
    # the sweep always "preferred" the shortest horizon, an easier target
    ("tune.space={windows.horizon: [6, 12]}", "tune.space: windows.horizon: give one choice; "
     "trials at different horizons forecast different targets"),
    # an OverflowError traceback from numpy, which also ended a whole sweep
    ("windows.stride=99999999999999999999", "windows.stride: Input should be less than or "
     "equal to 2147483647"),
    ("tune.space.train.lr=[0.001]", "tune.space: train: keys of tune.space are whole dotted "
     "settings; give the space as one mapping, e.g. --set 'tune.space={train.lr: "),
    ("pipeline.max_data_age=6", "pipeline.max_data_age: 6 is a number, not a duration with a "
     "unit; use e.g. '6h' or '2D'"),
])
def test_bad_tune_and_pipeline_settings_name_the_key(override: str, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(None, [override])
    assert message in str(err.value)
    assert "list[any]" not in str(err.value)


@pytest.mark.parametrize("override, message", [
    ("model.d_model=abc", "model.d_model: Input should be a valid integer, unable to parse "
     "string as an integer (got 'abc')"),
    ("train.lr=-1", "train.lr: Input should be greater than 0 (got -1)"),
    # a NaN in tune.space arrived as the text 'NaN' (a JSON round trip): the message said only
    # "unable to parse string"
    ('tune.space={"model.n_heads": [.nan]}', "model.n_heads: Input should be a finite number "
     "(got nan)"),
    ("model.positional=" + "x" * 200, "model.positional: Input should be 'sinusoidal' or "
     "'learned' (got '" + "x" * 61 + "...')"),  # a long value is cut, inside its quotes
    ("windows.lookback=1.5", "windows.lookback: Input should be a valid integer, got a number "
     "with a fractional part"),  # not "... (got 1.5)" twice over
    # the keys ettm2.yaml's encoder recipe sets
    ("train.max_windows_per_epoch=0", "train.max_windows_per_epoch: Input should be greater "
     "than 0 (got 0)"),
    ("train.huber_delta=.nan", "train.huber_delta: Input should be a finite number (got nan)"),
    ("train.huber_delta=0", "train.huber_delta: Input should be greater than 0 (got 0)"),
])
def test_type_errors_show_the_value_they_got(override: str, message: str) -> None:
    from forecast.tune import check_space

    with pytest.raises(ConfigError) as err:
        check_space(load_config(None, [override]))
    assert str(err.value).endswith(message)


@pytest.mark.parametrize("path", sorted((Path(__file__).parent.parent / "pipelines" / "configs")
                                        .glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_configs_validate(path):
    cfg = load_config(path)
    horizon = path.stem.partition("_h")[2]
    if horizon:  # a per-horizon benchmark file must be set to the horizon its name gives
        assert cfg.windows.horizon == int(horizon)


def write(path, text: str):
    path.write_text(text)
    return path


def test_extends_merges_sections_key_by_key_over_the_base(tmp_path):
    (tmp_path / "base").mkdir()
    write(tmp_path / "base" / "root.yaml",
          "name: root\nwindows: {lookback: 48, horizon: 12}\ntrain: {lr: 0.01, epochs: 3}\n")
    write(tmp_path / "base" / "mid.yaml", "extends: root.yaml\ntrain: {lr: 0.002}\n")
    child = write(tmp_path / "child.yaml",
                  "extends: base/mid.yaml\nname: child\nwindows: {horizon: 24}\n")
    cfg = load_config(child, ["train.epochs=5"])
    assert cfg.name == "child"
    assert (cfg.windows.lookback, cfg.windows.horizon) == (48, 24)
    assert (cfg.train.lr, cfg.train.epochs) == (0.002, 5)


def test_extends_cycle_is_refused(tmp_path):
    write(tmp_path / "a.yaml", "extends: b.yaml\n")
    write(tmp_path / "b.yaml", "extends: a.yaml\n")
    with pytest.raises(ConfigError, match="extend each other in a cycle: .*a.yaml -> .*b.yaml "
                                          "-> .*a.yaml; remove one 'extends:'"):
        load_config(tmp_path / "a.yaml")


def test_extends_missing_base_names_both_files(tmp_path):
    child = write(tmp_path / "child.yaml", "extends: nowhere.yaml\n")
    with pytest.raises(ConfigError, match=r"nowhere.yaml' \(extended by .*child.yaml'\) not found"):
        load_config(child)


@pytest.mark.parametrize("value", ["[a.yaml]", "''", "3"])
def test_extends_must_be_a_path(tmp_path, value):
    child = write(tmp_path / "child.yaml", f"extends: {value}\n")
    with pytest.raises(ConfigError, match="extends in .*child.yaml' must be the path of another"):
        load_config(child)


def test_training_imports_no_mlflow():
    # a training process that does not track (the benchmark's) must not pay mlflow's import,
    # about 50 MB of RSS: a config-time name check had pulled it in
    import subprocess
    import sys

    code = "import sys, forecast.runner; print('mlflow' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120, check=True).stdout.strip()
    assert out == "False"


@pytest.mark.parametrize(("override", "limit"), [
    ("model.d_model=100000000000000000000", 4096),  # it reached torch: a traceback or a hang
    ("model.n_layers=100000", 64), ("model.n_heads=128", 64), ("model.d_ff=1000000", 16384)])
def test_model_sizes_are_bounded(override, limit):
    key = override.partition("=")[0]
    with pytest.raises(ConfigError, match=rf"{key}: Input should be less than or equal to {limit}"):
        load_config(None, [override])


def test_a_leading_tilde_in_a_path_setting_is_the_home_folder(monkeypatch, tmp_path) -> None:
    # it named a folder called "~" in the working directory; a lock there held nothing
    monkeypatch.setenv("HOME", str(tmp_path))
    cfg = load_config(None, ["data.path=~/x.csv", "output_dir=~/out", "pipeline.lock_dir=~/l",
                             "train.checkpoint_dir=~/ck"])
    assert (cfg.data.path, cfg.output_dir, cfg.pipeline.lock_dir, cfg.train.checkpoint_dir) == (
        f"{tmp_path}/x.csv", f"{tmp_path}/out", f"{tmp_path}/l", f"{tmp_path}/ck")
    assert load_config(None, ["output_dir=a~b"]).output_dir == "a~b"
