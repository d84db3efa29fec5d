from __future__ import annotations

import math
import warnings

import pytest
import torch

from forecast.config import TrainConfig, load_config
from forecast.errors import ConfigError, TrainingError
from forecast.model import build_model
from forecast.train import (
    CHECKPOINT,
    EpochStats,
    fit,
    loss_function,
    make_scheduler,
    validation_loss,
)


def new_model(config, prepared, seed: int = 0):
    torch.manual_seed(seed)
    return build_model(config.model, config.windows.lookback, config.windows.horizon,
                       prepared.n_channels)


def train_cfg(config, **kw) -> TrainConfig:
    return config.train.model_copy(update=kw)


def states_equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def snapshot(model) -> dict:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_restores_best_validation_weights(tmp_path, tiny_config, tiny_prepared):
    model = new_model(tiny_config, tiny_prepared)
    snapshots: dict[int, dict] = {}

    def on_epoch(stats: EpochStats) -> None:
        snapshots[stats.epoch] = snapshot(model)
        if stats.epoch == 2:
            # Wreck the head: epoch 3 (and its validation loss) starts from ruined weights.
            with torch.no_grad():
                model.head.weight.add_(50 * torch.randn_like(model.head.weight))

    cfg = train_cfg(tiny_config, epochs=3)
    result = fit(model, tiny_prepared, cfg, tmp_path / "ckpt", "k", on_epoch)

    losses = [h.val_loss for h in result.history]
    assert [h.epoch for h in result.history] == [1, 2, 3]
    assert result.best_epoch == losses.index(min(losses)) + 1
    assert result.best_epoch < 3  # the wrecked last epoch is not the best
    assert result.best_val_loss == min(losses)
    assert states_equal(model.state_dict(), snapshots[result.best_epoch])
    assert not model.training
    val = validation_loss(model, tiny_prepared.windows("val"), cfg.batch_size * 4,
                          loss_function("mse"), torch.device("cpu"))
    assert val == pytest.approx(result.best_val_loss, rel=1e-6)
    # A finished run leaves no checkpoint behind.
    assert not (tmp_path / "ckpt" / CHECKPOINT).exists()


@pytest.mark.parametrize("val_metric, scored_by", [("mse", "mse"), ("mae", "mae"),
                                                     ("loss", "huber")])
def test_val_metric_scores_epochs_whatever_the_training_loss(
        tmp_path, tiny_config, tiny_prepared, val_metric, scored_by):
    cfg = train_cfg(tiny_config, epochs=2, loss="huber", val_metric=val_metric)
    model = new_model(tiny_config, tiny_prepared)
    result = fit(model, tiny_prepared, cfg, tmp_path / "ckpt", "k")

    val = tiny_prepared.windows("val")
    cpu = torch.device("cpu")
    scores = {name: validation_loss(model, val, 64, loss_function(name), cpu)
              for name in ("mse", "mae", "huber")}
    # the restored weights score best_val_loss on the chosen metric, and only on it
    assert result.best_val_loss == pytest.approx(scores[scored_by], rel=1e-6)
    for other in set(scores) - {scored_by}:
        assert scores[other] != pytest.approx(scores[scored_by], rel=1e-3)


def test_unknown_val_metric_names_the_key_and_choices(tiny_config):
    with pytest.raises(ValueError) as err:
        TrainConfig.model_validate({**tiny_config.train.model_dump(), "val_metric": "rmse"})
    assert "val_metric" in str(err.value) and "'loss', 'mse' or 'mae'" in str(err.value)


@pytest.mark.parametrize("value", ["rmse", "", "null", "1"])
def test_val_metric_override_error_names_the_key(value):
    with pytest.raises(ConfigError,
                       match="train.val_metric: Input should be 'loss', 'mse' or 'mae'"):
        load_config(None, [f"train.val_metric={value}"])


def test_early_stopping_when_validation_cannot_improve(tmp_path, tiny_config, tiny_prepared):
    # A learning rate far below float32 resolution leaves every weight as it was.
    cfg = train_cfg(tiny_config, epochs=10, patience=2, lr=1e-30, weight_decay=0.0,
                    schedule="constant")
    model = new_model(tiny_config, tiny_prepared)
    result = fit(model, tiny_prepared, cfg, tmp_path / "ckpt", "k")
    assert result.stopped_early
    assert len(result.history) == result.best_epoch + 2 < 10
    assert result.best_epoch == 1


def test_patience_zero_runs_every_epoch(tmp_path, tiny_config, tiny_prepared):
    cfg = train_cfg(tiny_config, epochs=3, patience=0, lr=1e-30, weight_decay=0.0)
    result = fit(new_model(tiny_config, tiny_prepared), tiny_prepared, cfg, tmp_path, "k")
    assert len(result.history) == 3 and not result.stopped_early


def test_same_seed_gives_identical_weights(tmp_path, tiny_config, tiny_prepared):
    # Dropout and pad augmentation draw random numbers too.
    cfg = train_cfg(tiny_config, epochs=2, pad_augment=0.5)
    config = tiny_config.model_copy(update={"model": tiny_config.model.model_copy(
        update={"dropout": 0.2})})
    weights = []
    for run in range(2):
        model = new_model(config, tiny_prepared)
        fit(model, tiny_prepared, cfg, tmp_path / f"ckpt{run}", "k")
        weights.append(snapshot(model))
    assert states_equal(weights[0], weights[1])
    other = new_model(config, tiny_prepared)
    fit(other, tiny_prepared, cfg.model_copy(update={"seed": 1}), tmp_path / "ckpt_other", "k")
    assert not states_equal(weights[0], other.state_dict())


def interrupt_after(epoch: int, record: list | None = None):
    def on_epoch(stats: EpochStats) -> None:
        if record is not None:
            record.append(stats)
        if stats.epoch == epoch:
            raise KeyboardInterrupt
    return on_epoch


def test_checkpoint_resume(tmp_path, tiny_config, tiny_prepared):
    cfg = train_cfg(tiny_config, epochs=4)
    ckpt = tmp_path / "ckpt"
    first: list[EpochStats] = []
    with pytest.raises(KeyboardInterrupt):
        fit(new_model(tiny_config, tiny_prepared), tiny_prepared, cfg, ckpt, "key",
            interrupt_after(2, first))
    assert [s.epoch for s in first] == [1, 2]

    # The checkpoint holds plain tensors and containers: loadable without unpickling code.
    state = torch.load(ckpt / CHECKPOINT, map_location="cpu", weights_only=True)
    assert state["run_key"] == "key" and state["epoch"] == 2
    assert len(state["history"]) == 2

    resumed_model = new_model(tiny_config, tiny_prepared, seed=123)  # weights come from disk
    result = fit(resumed_model, tiny_prepared, cfg, ckpt, "key")
    assert result.resumed_from_epoch == 2
    assert [h.epoch for h in result.history] == [1, 2, 3, 4]
    assert [h.val_loss for h in result.history[:2]] == [s.val_loss for s in first]
    assert not (ckpt / CHECKPOINT).exists()

    # Resuming continues exactly where the interrupted run stopped.
    straight = new_model(tiny_config, tiny_prepared)
    full = fit(straight, tiny_prepared, cfg, tmp_path / "straight", "key")
    assert [h.val_loss for h in full.history] == [h.val_loss for h in result.history]
    assert states_equal(straight.state_dict(), resumed_model.state_dict())


def test_checkpoint_of_another_run_is_ignored(tmp_path, tiny_config, tiny_prepared):
    cfg = train_cfg(tiny_config, epochs=4)
    ckpt = tmp_path / "ckpt"
    with pytest.raises(KeyboardInterrupt):
        fit(new_model(tiny_config, tiny_prepared), tiny_prepared, cfg, ckpt, "key-a",
            interrupt_after(2))
    result = fit(new_model(tiny_config, tiny_prepared), tiny_prepared, cfg, ckpt, "key-b")
    assert result.resumed_from_epoch == 0
    assert [h.epoch for h in result.history] == [1, 2, 3, 4]


@pytest.mark.parametrize("content", [b"garbage", b""])
def test_unreadable_checkpoint_is_ignored_with_a_warning(tmp_path, tiny_config, tiny_prepared,
                                                        caplog, content):
    # it used to end every later run of the job in an UnpicklingError traceback
    cfg = train_cfg(tiny_config, epochs=2)
    (tmp_path / "ckpt").mkdir()
    (tmp_path / "ckpt" / CHECKPOINT).write_bytes(content)
    result = fit(new_model(tiny_config, tiny_prepared), tiny_prepared, cfg, tmp_path / "ckpt",
                 "key")
    assert result.resumed_from_epoch == 0 and len(result.history) == 2
    assert any("cannot be read" in r.getMessage() and "training starts afresh" in r.getMessage()
               for r in caplog.records)


def test_resume_false_ignores_checkpoint(tmp_path, tiny_config, tiny_prepared):
    cfg = train_cfg(tiny_config, epochs=3)
    ckpt = tmp_path / "ckpt"
    with pytest.raises(KeyboardInterrupt):
        fit(new_model(tiny_config, tiny_prepared), tiny_prepared, cfg, ckpt, "key",
            interrupt_after(1))
    result = fit(new_model(tiny_config, tiny_prepared), tiny_prepared,
                 cfg.model_copy(update={"resume": False}), ckpt, "key")
    assert result.resumed_from_epoch == 0 and len(result.history) == 3


def test_diverging_loss_raises_training_error(tmp_path, tiny_config, tiny_prepared):
    cfg = train_cfg(tiny_config, epochs=3, lr=1e30, grad_clip=None, schedule="constant",
                    warmup_frac=0.0)
    with pytest.raises(TrainingError) as err, warnings.catch_warnings():
        warnings.simplefilter("error")  # torch warned, before the one-line error, of a tensor
        fit(new_model(tiny_config, tiny_prepared), tiny_prepared, cfg, tmp_path, "k")
    msg = str(err.value)
    assert "training loss became" in msg and "lower train.lr" in msg
    assert err.value.exit_code == 4


def scheduled_lrs(cfg: TrainConfig, total: int) -> list[float]:
    param = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([param], lr=cfg.lr)
    sched = make_scheduler(opt, cfg, total)
    lrs = []
    for _ in range(total):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return lrs


def test_warmup_then_cosine_by_hand():
    cfg = TrainConfig(lr=1.0, warmup_frac=0.25, schedule="cosine")
    lrs = scheduled_lrs(cfg, 8)  # warm-up = int(0.25 * 8) = 2 steps
    expected = [1 / 2, 2 / 2] + [0.5 * (1 + math.cos(math.pi * k / 6)) for k in range(6)]
    assert lrs == pytest.approx(expected)
    assert lrs[2] == pytest.approx(1.0) and lrs[5] == pytest.approx(0.5)


def test_constant_schedule_after_warmup():
    cfg = TrainConfig(lr=0.1, warmup_frac=0.5, schedule="constant")
    assert scheduled_lrs(cfg, 6) == pytest.approx([0.1 / 3, 0.2 / 3, 0.1, 0.1, 0.1, 0.1])


def test_onecycle_peaks_at_lr():
    cfg = TrainConfig(lr=0.5, warmup_frac=0.25, schedule="onecycle")
    lrs = scheduled_lrs(cfg, 20)
    assert max(lrs) == pytest.approx(0.5, rel=1e-3)
    assert lrs[0] < 0.1 and lrs[-1] < 0.01


@pytest.mark.parametrize("name", ["SIGINT", "SIGTERM"])
def test_ctrl_c_and_sigterm_are_deferred_to_the_next_check_and_the_handler_restored(
        name: str) -> None:
    import os
    import signal
    import time

    from forecast.train import DeferredInterrupt

    sig = getattr(signal, name)
    before = signal.getsignal(sig)
    with DeferredInterrupt() as interrupt:
        os.kill(os.getpid(), sig)  # would end the process (or raise) right here
        assert interrupt.requested
        with pytest.raises(KeyboardInterrupt):
            interrupt.check()
        with pytest.raises(KeyboardInterrupt):  # a second signal stops at once
            os.kill(os.getpid(), sig)
            time.sleep(1)
    assert signal.getsignal(sig) is before


def test_a_signal_after_the_last_check_stops_at_the_end_of_the_block() -> None:
    import os
    import signal

    from forecast.train import DeferredInterrupt

    with pytest.raises(KeyboardInterrupt):
        with DeferredInterrupt():
            os.kill(os.getpid(), signal.SIGTERM)  # deferred, and no check follows
    with DeferredInterrupt():  # no signal: the block ends normally
        pass


def test_huber_delta_sets_where_the_loss_turns_linear():
    pred, target = torch.tensor([0.2, 3.0]), torch.zeros(2)
    # by hand: 0.5 e^2 below delta, delta (|e| - delta / 2) above it
    assert float(loss_function("huber", 0.5)(pred, target)) == pytest.approx(
        (0.5 * 0.2 ** 2 + 0.5 * (3.0 - 0.25)) / 2)
    assert float(loss_function("huber")(pred, target)) == pytest.approx(
        float(torch.nn.functional.smooth_l1_loss(pred, target)))  # the default, delta 1
    assert float(loss_function("huber", 0.5)(pred, target, reduction="sum")) == pytest.approx(
        0.5 * 0.2 ** 2 + 0.5 * (3.0 - 0.25))


def test_huber_delta_without_the_huber_loss_is_refused_by_name():
    # it used to be ignored silently: a sweep over it with loss mse would have trained one
    # model several times
    for loss in ("mse", "mae"):
        message = (rf"train.huber_delta \(0.5\) is the Huber loss's threshold, but train.loss "
                   rf"is '{loss}': set train.loss to 'huber', or train.huber_delta to null")
        with pytest.raises(ConfigError, match=message):
            load_config(None, [f"train.loss={loss}", "train.huber_delta=0.5"])
    assert load_config(None, ["train.loss=huber", "train.huber_delta=0.5"]).train.huber_delta == 0.5
    # unset (or null) means the smooth L1's 1.0, whatever the loss
    assert load_config(None, ["train.loss=mse", "train.huber_delta="]).train.huber_delta is None
    assert load_config(None, ["train.loss=huber"]).train.huber_delta is None


@pytest.mark.parametrize("value, message", [(0, "greater than 0"), (-0.5, "greater than 0"),
                                            (float("nan"), "finite number"),
                                            (float("inf"), "finite number"), ("", "valid number")])
def test_huber_delta_must_be_a_positive_finite_number(tiny_config, value, message):
    with pytest.raises(ValueError) as err:
        TrainConfig.model_validate({**tiny_config.train.model_dump(), "huber_delta": value})
    assert "huber_delta" in str(err.value) and message in str(err.value)


@pytest.mark.parametrize("value, message", [(-0.1, "greater than or equal to 0"),
                                            (2, "less than or equal to 1"),
                                            (float("nan"), "finite number"), ("", "valid number")])
def test_pad_augment_must_be_a_share_between_0_and_1(value, message):
    with pytest.raises(ConfigError) as err:
        load_config(None, [f"train.pad_augment={value}"])
    assert "train.pad_augment" in str(err.value) and message in str(err.value)


def test_a_stop_ends_training_at_a_batch_and_keeps_the_best_whole_epoch(
        tmp_path, tiny_config, tiny_prepared):
    model = new_model(tiny_config, tiny_prepared)
    snapshots: dict[int, dict] = {}
    epochs_seen: list[int] = []
    asked = 0

    def on_epoch(stats: EpochStats) -> None:
        snapshots[stats.epoch] = snapshot(model)
        epochs_seen.append(stats.epoch)

    def stop() -> str | None:  # the budget runs out at the second batch of epoch 3
        nonlocal asked
        asked += 1
        return "the budget ran out" if len(epochs_seen) == 2 and asked > 1 else None

    cfg = train_cfg(tiny_config, epochs=6)
    result = fit(model, tiny_prepared, cfg, tmp_path / "ckpt", "k", on_epoch, stop)
    assert result.stopped == "the budget ran out in epoch 3"
    assert [h.epoch for h in result.history] == [1, 2]  # the partial epoch is not scored
    assert result.best_epoch in (1, 2)
    assert states_equal(model.state_dict(), snapshots[result.best_epoch])
    assert not (tmp_path / "ckpt" / CHECKPOINT).exists()
