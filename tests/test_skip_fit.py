"""The least-squares linear skip: exact on what a linear map can forecast, optimal for the
model's own denormalised squared error, frozen, and kept when training only makes it worse."""

from __future__ import annotations

import copy
import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from forecast.config import Config, build_config, load_config
from forecast.data import DataConfig, frame_to_series
from forecast.errors import ConfigError
from forecast.model import build_model
from forecast.skip_fit import IRLS_STEPS, RIDGE, SkipSolutions, fit_linear_skip, reduce_rank
from forecast.train import CHECKPOINT, fit
from forecast.windows import Prepared, prepare, random_pad_mask

from .conftest import tiny_raw


def lsq_config(revin: bool = True):
    return build_config(tiny_raw(model={"linear_skip": True, "skip_fit": "least_squares",
                                        "revin": revin}), "lsq test config")


def prepared_for(config, frame: pd.DataFrame):
    return prepare(frame_to_series(frame, DataConfig(), source="test"), config.split,
                   config.windows)


def sine_frame(n: int = 400) -> pd.DataFrame:
    t = np.arange(n, dtype=np.float64)
    # different levels and amplitudes per channel: under RevIN one shared map fits both
    return pd.DataFrame({"date": pd.date_range("2024-01-01", periods=n, freq="h"),
                         "a": 5.0 + 2.0 * np.sin(2 * np.pi * t / 12),
                         "b": -3.0 + 0.5 * np.cos(2 * np.pi * t / 12 + 1.0)})


def fitted(config, prepared, seed: int = 0, *, double: bool = False, pad_augment: float = 0.0,
           pad_seed: int = 0):
    """A new model with its skip solved; `double` stores the float64 solution unrounded."""
    torch.manual_seed(seed)
    model = build_model(config.model, config.windows.lookback, config.windows.horizon,
                        prepared.n_channels)
    if double:
        model.double()
    used = fit_linear_skip(model, prepared.windows("train"), pad_augment=pad_augment,
                           seed=pad_seed)
    return model.eval(), used


@pytest.mark.parametrize("revin", [True, False])
def test_forecasts_a_pure_sine_almost_exactly_before_any_training(revin):
    config = lsq_config(revin)
    prepared = prepared_for(config, sine_frame())
    model, used = fitted(config, prepared)
    assert used == len(prepared.windows("train"))
    x, y = next(prepared.windows("test").batches(1000))
    with torch.no_grad():
        mse = float(((model(x) - y) ** 2).mean())
    # y[t] = x[t - 12] exactly; only the tiny ridge penalty keeps it from zero
    assert mse < 1e-4
    assert float((y ** 2).mean()) > 0.5  # the series is not trivially zero after scaling


def gradient_ratio(model, x: torch.Tensor, y: torch.Tensor,
                   pad: torch.Tensor | None = None) -> float:
    """|gradient| of the closed form's objective (squared error through the model's own forward
    pass plus the ridge) at the solved skip, relative to that at a perturbed skip: near zero
    only at the optimum. Works on a copy: the model is left as it was."""
    model = copy.deepcopy(model).double()
    model.skip.requires_grad_(True)
    # the ridge counts the rows of one system: every window of every channel, or per channel
    rows = x.shape[0] * (1 if model.cfg.skip_per_channel else x.shape[2])

    def gradient() -> torch.Tensor:
        model.skip.weight.grad = model.skip.bias.grad = None
        sse = ((model(x.double(), pad) - y.double()) ** 2).sum()
        (sse + RIDGE * rows * (model.skip.weight ** 2).sum()).backward()
        return torch.cat([model.skip.weight.grad.flatten(), model.skip.bias.grad.flatten()])

    at_optimum = gradient()
    with torch.no_grad():
        model.skip.weight.add_(0.01)
    return float(at_optimum.norm() / gradient().norm())


def test_solution_minimises_the_models_denormalised_squared_error(wide_frame):
    config = lsq_config()
    prepared = prepared_for(config, wide_frame)
    model, _ = fitted(config, prepared, double=True)
    x, y = next(prepared.windows("train").batches(10_000))
    # (RevIN's eps, added to the std when the forecast is denormalised, leaves about 1e-5)
    assert gradient_ratio(model, x, y) < 1e-4


@pytest.mark.parametrize("per_channel", [False, True])
@pytest.mark.parametrize("pad_augment", [0.0, 1.0])
def test_the_level_input_and_per_channel_maps_are_solved_to_the_optimum(wide_frame, per_channel,
                                                                        pad_augment):
    config = build_config(tiny_raw(model={
        "linear_skip": True, "skip_fit": "least_squares", "skip_level": True,
        "skip_per_channel": per_channel}), "level")
    prepared = prepared_for(config, wide_frame)
    model, _ = fitted(config, prepared, double=True, pad_augment=pad_augment, pad_seed=3)
    L = config.windows.lookback
    assert model.skip.weight.shape[-1] == L + 1  # the lags and the level
    x, y = next(prepared.windows("train").batches(1024))
    pad = random_pad_mask(len(x), L, config.model.shortest_history, pad_augment,
                          torch.Generator().manual_seed(3))
    assert gradient_ratio(model, x, y, pad) < 1e-4
    # the level is used: its weights are not all zero
    assert float(model.skip.weight[..., L].abs().max()) > 1e-3


def test_per_channel_skip_of_the_demo_solves_on_two_threads() -> None:
    # the demo's 5 per-channel systems of 170 unknowns made batched LU return invalid pivots
    # on 2 threads (a RuntimeError from fit_linear_skip); they are solved by Cholesky
    from forecast.runner import load_data

    config = load_config(Path(__file__).resolve().parent.parent / "pipelines" / "configs" /
                         "demo.yaml", ["model.skip_per_channel=true"])
    prepared = prepare(load_data(config), config.split, config.windows)
    model = build_model(config.model, config.windows.lookback, config.windows.horizon,
                        prepared.n_channels)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        fit_linear_skip(model, prepared.windows("train"), pad_augment=0.1)
    finally:
        torch.set_num_threads(threads)
    assert model.skip.weight.shape == (5, 24, 169) and torch.isfinite(model.skip.weight).all()
    x, y = next(prepared.windows("val").batches(512))
    with torch.no_grad():
        mse = float(((model.eval()(x) - y) ** 2).mean())
    assert mse < float((y ** 2).mean())  # a forecast, not noise: beats predicting the mean


@pytest.mark.parametrize("revin", [True, False])
def test_pad_augmented_fit_minimises_the_error_on_the_padded_windows_it_drew(wide_frame, revin):
    config = lsq_config(revin)
    prepared = prepared_for(config, wide_frame)
    train = prepared.windows("train")
    assert len(train) <= 1024  # one batch of the fit, so its padding can be redrawn below
    model, _ = fitted(config, prepared, double=True, pad_augment=1.0, pad_seed=3)
    x, y = next(train.batches(1024))
    pad = random_pad_mask(len(x), x.shape[1], config.model.shortest_history, 1.0,
                          torch.Generator().manual_seed(3))
    assert pad is not None and pad.any(1).float().mean() > 0.8
    # optimal for the forward pass on the windows as padded (padded steps zeroed after RevIN
    # statistics over the real ones), and not for the same windows unpadded
    assert gradient_ratio(model, x, y, pad) < 1e-4
    assert gradient_ratio(model, x, y) > 0.1


def test_pad_augmented_fit_trades_full_windows_for_short_histories(wide_frame):
    config = lsq_config()
    prepared = prepared_for(config, wide_frame)
    train, val = prepared.windows("train"), prepared.windows("val")

    def solved(pad_augment: float, seed: int):
        return fitted(config, prepared, pad_augment=pad_augment, pad_seed=seed)[0]

    plain, padded = solved(0.0, 0), solved(0.5, 0)
    assert torch.equal(plain.skip.weight, solved(0.0, 7).skip.weight)  # no padding: no draws

    def mse(model, windows, keep: int) -> float:
        x, y = next(windows.batches(10_000))
        pad = (torch.arange(x.shape[1]) < x.shape[1] - keep).expand(len(x), -1)
        with torch.no_grad():
            return float(((model(x, pad if keep < x.shape[1] else None) - y) ** 2).mean())

    # with 8 of 24 steps of history the fit that drew padding forecasts far better...
    assert mse(padded, val, 8) < 0.8 * mse(plain, val, 8)
    # ...at a price on full windows, where the plain fit is the least-squares optimum
    assert mse(plain, train, 24) < mse(padded, train, 24)


def test_training_solves_the_skip_with_its_pad_augmentation(tmp_path, wide_frame):
    config = lsq_config()
    prepared = prepared_for(config, wide_frame)
    cfg = config.train.model_copy(update={"epochs": 1, "pad_augment": 0.5, "seed": 4,
                                          "device": "cpu"})
    torch.manual_seed(0)
    model = build_model(config.model, config.windows.lookback, config.windows.horizon,
                        prepared.n_channels)
    fit(model, prepared, cfg, tmp_path, "k")
    direct, _ = fitted(config, prepared, pad_augment=0.5, pad_seed=4)
    assert torch.equal(model.skip.weight, direct.skip.weight)  # frozen, so training kept it


def test_fit_refuses_a_share_outside_0_1_and_a_trained_revin(wide_frame):
    config = lsq_config()
    prepared = prepared_for(config, wide_frame)
    model, _ = fitted(config, prepared)
    with pytest.raises(ValueError, match="between 0 and 1; got 1.5"):
        fit_linear_skip(model, prepared.windows("train"), pad_augment=1.5)
    with torch.no_grad():
        model.revin.bias.add_(0.1)
    with pytest.raises(ValueError, match="solve the skip before training"):
        fit_linear_skip(model, prepared.windows("train"))


def test_skip_is_frozen_and_head_starts_at_zero(wide_frame):
    config = lsq_config()
    model, _ = fitted(config, prepared_for(config, wide_frame))
    assert not model.skip.weight.requires_grad and not model.skip.bias.requires_grad
    assert torch.count_nonzero(model.head.weight) == 0 and torch.count_nonzero(model.head.bias) == 0
    assert model.embed.weight.requires_grad


def test_model_without_skip_is_refused(wide_frame, tiny_config):
    prepared = prepared_for(tiny_config, wide_frame)
    model = build_model(tiny_config.model, 24, 6, prepared.n_channels)
    with pytest.raises(ValueError, match="model.linear_skip is false"):
        fit_linear_skip(model, prepared.windows("train"))


def test_config_requires_linear_skip():
    with pytest.raises(ConfigError, match="set model.linear_skip to true"):
        load_config(None, ["model.linear_skip=false", "model.skip_fit=least_squares"])


def test_turning_the_default_skip_off_turns_its_own_settings_off():
    # the defaults solve the skip robustly with the level input: leaving it out means all that
    off = load_config(None, ["model.linear_skip=false"]).model
    assert (off.skip_fit, off.skip_level, off.skip_huber_delta) == ("gradient", False, None)
    by_gradient = load_config(None, ["model.skip_fit=gradient"]).model
    assert by_gradient.linear_skip and by_gradient.skip_huber_delta is None
    assert not load_config(None, ["model.revin=false"]).model.skip_level
    # a setting given alongside is kept, and its conflict named
    with pytest.raises(ConfigError, match="set model.linear_skip and model.revin to true, or "
                                          "model.skip_level to false"):
        load_config(None, ["model.linear_skip=false", "model.skip_level=true"])


def test_training_keeps_the_linear_forecast_when_every_epoch_is_worse(tmp_path, wide_frame):
    config = lsq_config()
    prepared = prepared_for(config, wide_frame)
    model, _ = fitted(config, prepared)
    start = {k: v.clone() for k, v in model.state_dict().items()}

    def wreck(stats) -> None:
        with torch.no_grad():  # each epoch ends with a ruined head: validation gets worse
            model.head.weight.add_(10.0)

    cfg = config.train.model_copy(update={"epochs": 5, "patience": 2})
    result = fit(model, prepared, cfg, tmp_path, "k", on_epoch=wreck)
    assert result.best_epoch == 0 and result.stopped_early and len(result.history) == 2
    assert all(torch.equal(model.state_dict()[k], v) for k, v in start.items())
    assert result.best_val_loss < min(h.val_loss for h in result.history)
    # the linear forecast's own score is kept apart from best_val_loss, for the run's metrics
    with torch.no_grad():
        errors = [((model(x) - y) ** 2).flatten() for x, y in prepared.windows("val").batches(7)]
    assert result.linear_val_loss == pytest.approx(float(torch.cat(errors).mean()), rel=1e-5)
    assert result.metrics() == {"best_epoch": 0, "train_seconds": result.seconds,
                                "linear_skip_val_loss": result.linear_val_loss}


def test_a_gradient_trained_skip_records_no_linear_score(tmp_path, wide_frame):
    config = build_config(tiny_raw(model={"linear_skip": True, "skip_fit": "gradient"}), "t")
    prepared = prepared_for(config, wide_frame)
    torch.manual_seed(0)
    model = build_model(config.model, config.windows.lookback, config.windows.horizon,
                        prepared.n_channels)
    cfg = config.train.model_copy(update={"epochs": 1})
    result = fit(model, prepared, cfg, tmp_path, "k")
    assert result.linear_val_loss is None
    assert set(result.metrics()) == {"best_epoch", "train_seconds"}


@pytest.mark.parametrize("value", ["lsq", "", "null", "1"])
def test_unknown_skip_fit_names_the_key_and_the_choices(value):
    with pytest.raises(ConfigError,
                       match="model.skip_fit: Input should be 'gradient' or 'least_squares'"):
        load_config(None, ["model.linear_skip=true", f"model.skip_fit={value}"])


def test_resume_keeps_the_solved_skip_frozen_and_matches_a_straight_run(tmp_path, wide_frame):
    config = lsq_config()
    prepared = prepared_for(config, wide_frame)
    cfg = config.train.model_copy(update={"epochs": 3, "patience": 0})

    def model_for(seed: int):
        torch.manual_seed(seed)
        return build_model(config.model, config.windows.lookback, config.windows.horizon,
                           prepared.n_channels)

    def stop_after_first(stats) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        fit(model_for(0), prepared, cfg, tmp_path / "ckpt", "k", on_epoch=stop_after_first)
    # the resumed model starts from other random weights and is never solved again: its skip
    # comes from the checkpoint, and training must not move it
    resumed = model_for(123)
    assert not resumed.skip.weight.requires_grad
    result = fit(resumed, prepared, cfg, tmp_path / "ckpt", "k")
    assert result.resumed_from_epoch == 1

    straight = model_for(0)
    straight_result = fit(straight, prepared, cfg, tmp_path / "straight", "k")
    # the epoch-0 score was taken before the interruption and comes back from the checkpoint
    assert result.linear_val_loss is not None
    assert result.linear_val_loss == straight_result.linear_val_loss
    solved, _ = fitted(config, prepared)
    for model in (resumed, straight):
        assert torch.equal(model.skip.weight, solved.skip.weight)
        assert torch.equal(model.skip.bias, solved.skip.bias)
    assert all(torch.equal(a, b) for a, b in zip(resumed.state_dict().values(),
                                                 straight.state_dict().values(), strict=True))


def test_resume_from_a_checkpoint_without_the_linear_score(tmp_path, wide_frame):
    # checkpoints written before the score was recorded resume; the score is then unknown
    config = lsq_config()
    prepared = prepared_for(config, wide_frame)
    cfg = config.train.model_copy(update={"epochs": 2, "patience": 0})
    model, _ = fitted(config, prepared)

    def stop_after_first(stats) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        fit(model, prepared, cfg, tmp_path, "k", on_epoch=stop_after_first)
    path = tmp_path / CHECKPOINT
    state = torch.load(path, weights_only=True)
    del state["linear_val_loss"]
    torch.save(state, path)
    result = fit(model, prepared, cfg, tmp_path, "k")
    assert result.resumed_from_epoch == 1 and len(result.history) == 2
    assert result.linear_val_loss is None and "linear_skip_val_loss" not in result.metrics()


def huber_config(delta: float):
    return build_config(tiny_raw(model={"linear_skip": True, "skip_fit": "least_squares",
                                        "skip_huber_delta": delta}), "huber test config")


def test_huber_fit_with_an_unreachable_threshold_is_the_plain_fit(wide_frame):
    prepared = prepared_for(lsq_config(), wide_frame)
    plain, _ = fitted(lsq_config(), prepared)
    robust, used = fitted(huber_config(1e9), prepared)
    assert used == len(prepared.windows("train"))
    assert torch.allclose(robust.skip.weight, plain.skip.weight, atol=1e-6)
    assert torch.allclose(robust.skip.bias, plain.skip.bias, atol=1e-6)


def test_huber_fit_ignores_an_excursion_the_plain_fit_follows():
    frame = sine_frame()
    frame.loc[60:75, "a"] += 40.0  # a sensor excursion inside the training block
    scores = {}
    for name, config in (("plain", lsq_config()), ("huber", huber_config(0.5))):
        prepared = prepared_for(config, frame)
        model, _ = fitted(config, prepared)
        assert not model.skip.weight.requires_grad  # frozen, as the plain fit
        x, y = next(prepared.windows("test").batches(1000))
        with torch.no_grad():
            scores[name] = float(((model(x) - y) ** 2).mean())
    # the test block is the clean sine, which one map forecasts exactly; Huber weights shrink
    # the excursion's windows without removing them
    assert scores["huber"] < 0.25 * scores["plain"]  # measured: 0.00087 against 0.0055


def test_huber_threshold_needs_the_least_squares_fit():
    with pytest.raises(ConfigError, match="set model.skip_fit to 'least_squares', or "
                                          "model.skip_huber_delta to null"):
        load_config(None, ["model.skip_fit=gradient", "model.skip_huber_delta=0.5"])
    for value, message in (("0", "greater than 0"), ("-1", "greater than 0"),
                           ("nan", "finite number"), ("inf", "finite number"),
                           ("abc", "valid number")):
        with pytest.raises(ConfigError, match=f"model.skip_huber_delta: Input should be a?.*"
                                              f"{message}"):
            load_config(None, ["model.linear_skip=true", "model.skip_fit=least_squares",
                               f"model.skip_huber_delta={value}"])


def rank_config(rank: int | None, horizon: int = 12):
    return build_config(tiny_raw(windows={"horizon": horizon},
                                 model={"linear_skip": True, "skip_fit": "least_squares",
                                        "skip_rank": rank}), "rank test config")


def test_reduce_rank_under_an_identity_gram_is_the_truncated_svd():
    solution = torch.randn(10, 6, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    u, s, vh = torch.linalg.svd(solution, full_matrices=False)
    for rank in (1, 2, 4):
        best = u[:, :rank] @ torch.diag(s[:rank]) @ vh[:rank]  # Eckart-Young
        assert torch.allclose(reduce_rank(solution, torch.eye(10, dtype=torch.float64), rank),
                              best, atol=1e-10)
    assert torch.allclose(reduce_rank(solution, torch.eye(10, dtype=torch.float64), 6), solution,
                          atol=1e-10)  # full rank changes nothing


def test_reduce_rank_keeps_a_map_that_already_has_that_rank():
    g = torch.Generator().manual_seed(1)
    low = torch.randn(10, 2, generator=g, dtype=torch.float64) @ torch.randn(
        2, 6, generator=g, dtype=torch.float64)
    features = torch.randn(50, 10, generator=g, dtype=torch.float64)
    # any positive-definite gram: its fitted forecasts span the map's own two directions
    assert torch.allclose(reduce_rank(low, features.T @ features, 2), low, atol=1e-9)


def skip_solution(model) -> torch.Tensor:
    return torch.cat([model.skip.weight.T, model.skip.bias[None]]).double()  # [(L+1) x H]


def test_skip_rank_fixes_the_solved_maps_rank(wide_frame):
    ranks = {}
    for rank in (None, 3):
        config = rank_config(rank)
        model, _ = fitted(config, prepared_for(config, wide_frame))
        ranks[rank] = int(torch.linalg.matrix_rank(skip_solution(model), atol=1e-5))
    assert ranks == {None: 12, 3: 3}  # noisy data: the plain fit uses every direction


def test_rank_two_skip_still_forecasts_a_sine_which_rank_one_cannot():
    scores = {}
    for rank in (2, 1):
        config = rank_config(rank)
        prepared = prepared_for(config, sine_frame())
        model, _ = fitted(config, prepared)
        x, y = next(prepared.windows("test").batches(1000))
        with torch.no_grad():
            scores[rank] = float(((model(x) - y) ** 2).mean())
    # after the window's mean is removed, a sine's future is a mix of one sine and one cosine
    assert scores[2] < 1e-4  # measured 7e-9
    assert scores[1] > 0.2  # measured 0.50: one shape cannot hold both phases


def test_skip_rank_is_checked_by_name():
    with pytest.raises(ConfigError, match="set model.skip_fit to 'least_squares', or "
                                          "model.skip_rank to null"):
        load_config(None, ["model.skip_fit=gradient", "model.skip_rank=4"])
    lsq = ["model.linear_skip=true", "model.skip_fit=least_squares", "windows.horizon=24"]
    with pytest.raises(ConfigError, match=r"model.skip_rank \(24\) must be below "
                                          r"windows.horizon \(24\)"):
        load_config(None, [*lsq, "model.skip_rank=24"])
    for value, message in (("0", "greater than 0"), ("-2", "greater than 0"),
                           ("1.5", "valid integer"), ("abc", "valid integer")):
        with pytest.raises(ConfigError, match=f"model.skip_rank: Input should be a?.*{message}"):
            load_config(None, [*lsq, f"model.skip_rank={value}"])
    assert load_config(None, [*lsq, "model.skip_rank=23"]).model.skip_rank == 23


def two_dynamics_frame(n: int = 800) -> pd.DataFrame:
    """Channel a persists (AR(1), phi 0.9), channel b alternates (phi -0.9): the best forecast
    of one is the opposite of the other's, so no one map serves both."""
    rng = np.random.default_rng(3)
    a, b = np.zeros(n), np.zeros(n)
    for t in range(1, n):
        a[t] = 0.9 * a[t - 1] + rng.standard_normal()
        b[t] = -0.9 * b[t - 1] + rng.standard_normal()
    return pd.DataFrame({"date": pd.date_range("2024-01-01", periods=n, freq="h"),
                         "a": 5.0 + a, "b": -3.0 + b})


@pytest.mark.parametrize("robust", [None, 0.5])
def test_a_per_channel_skip_is_each_channel_solved_on_its_own(robust):
    frame = two_dynamics_frame()
    model_raw = {"linear_skip": True, "skip_fit": "least_squares", "skip_per_channel": True,
                 "skip_huber_delta": robust}
    config = build_config(tiny_raw(model=model_raw), "per-channel")
    model, _ = fitted(config, prepared_for(config, frame), double=True)
    assert model.skip.weight.shape == (2, config.windows.horizon, config.windows.lookback)
    single = build_config(tiny_raw(model={**model_raw, "skip_per_channel": False}), "single")
    for c, channel in enumerate(("a", "b")):
        alone, _ = fitted(single, prepared_for(single, frame[["date", channel]]), double=True)
        # the same normal equations as a model trained on that channel alone
        torch.testing.assert_close(model.skip.weight[c], alone.skip.weight, rtol=1e-6, atol=1e-8)
        torch.testing.assert_close(model.skip.bias[c], alone.skip.bias, rtol=1e-6, atol=1e-8)


def test_a_per_channel_skip_forecasts_channels_whose_dynamics_differ():
    frame = two_dynamics_frame()
    scores = {}
    for per_channel in (False, True):
        # a short horizon, where the two channels' best forecasts differ most
        config = build_config(tiny_raw(windows={"horizon": 2}, model={
            "linear_skip": True, "skip_fit": "least_squares", "skip_per_channel": per_channel}),
            "per-channel")
        prepared = prepared_for(config, frame)
        model, _ = fitted(config, prepared)
        x, y = next(prepared.windows("val").batches(1000))
        with torch.no_grad():
            scores[per_channel] = float(((model(x) - y) ** 2).mean())
    assert scores[True] < 0.8 * scores[False], scores


def test_a_per_channel_skip_needs_the_skip_and_the_level_needs_revin():
    with pytest.raises(ConfigError, match="model.skip_per_channel needs the skip"):
        build_config(tiny_raw(model={"skip_per_channel": True}), "test")
    with pytest.raises(ConfigError, match="model.skip_level feeds the RevIN level"):
        build_config(tiny_raw(model={"linear_skip": True, "skip_level": True, "revin": False}),
                     "test")


@pytest.mark.parametrize("delta, passes", [(None, 1), (0.5, 1 + IRLS_STEPS)])
def test_the_solve_says_what_it_reads_and_each_pass_it_finishes(
        wide_frame, caplog, delta, passes):
    # on a large set the solve takes minutes: the log shows it is working, pass by pass
    prepared = prepared_for(huber_config(10.0), wide_frame)
    config = huber_config(delta) if delta is not None else lsq_config()
    model = build_model(config.model, config.windows.lookback, config.windows.horizon,
                        prepared.n_channels)
    train = prepared.windows("train")
    with caplog.at_level(logging.INFO, logger="forecast.skip_fit"):
        fit_linear_skip(model, train)
    lines = [r.getMessage() for r in caplog.records if r.name == "forecast.skip_fit"]
    assert lines[0].startswith(f"solving the linear skip by least squares: {len(train)} "
                               f"windows x {prepared.n_channels} channels, {passes} pass")
    assert [line.split(",")[0] for line in lines[1:]] == [
        f"linear skip: pass {k} of {passes} read" for k in range(1, passes + 1)]


def test_a_skip_solved_once_is_reused_by_a_model_of_another_width(
        tiny_prepared: Prepared, tiny_config: Config, tmp_path: Path) -> None:
    skips = SkipSolutions()
    results, models = [], []
    for d_model in (8, 16):
        cfg = tiny_config.model.model_copy(update={"d_model": d_model, "linear_skip": True,
                                                   "skip_fit": "least_squares"})
        model = build_model(cfg, tiny_prepared.lookback, tiny_prepared.horizon,
                            tiny_prepared.n_channels)
        train = tiny_config.train.model_copy(update={"epochs": 1, "resume": False})
        results.append(fit(model, tiny_prepared, train, tmp_path / str(d_model), "key",
                           skip=skips.slot("same windows and skip settings")))
        models.append(model)
    assert len(skips.solved) == 1
    assert results[1].linear_val_loss == results[0].linear_val_loss
    # both skips are the one solution (frozen through training), the second never solved
    solved = skips.solved["same windows and skip settings"]
    for model in models:
        assert torch.equal(model.skip.weight, solved.weight)
        assert torch.equal(model.skip.bias, solved.bias)
