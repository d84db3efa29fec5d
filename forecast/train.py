"""Training loop: AdamW, warm-up + cosine (or one-cycle), clipping, early stopping with
best-weights restore, per-epoch checkpoints and resume.

One process or N (forecast.distributed): the same loop. With a process group each rank trains
on its share of every batch under DistributedDataParallel, losses are summed across ranks so
that every rank takes the same early-stopping and best-epoch decisions, and rank 0 alone reads
and writes checkpoints (of the unwrapped model), sending a resumed state to the others."""

from __future__ import annotations

import copy
import functools
import logging
import math
import os
import pickle
import random
import signal
import sys
import threading
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from forecast import distributed
from forecast.config import TrainConfig
from forecast.distributed import SINGLE, Dist
from forecast.errors import TrainingError
from forecast.model import PatchTransformer
from forecast.skip_fit import SkipSlot, fit_linear_skip
from forecast.windows import Prepared, WindowSet, random_pad_mask

log = logging.getLogger(__name__)

CHECKPOINT = "last.ckpt"


@dataclass
class EpochStats:
    epoch: int  # 1-based
    train_loss: float
    val_loss: float  # scored by train.val_metric (the training loss by default)
    lr: float
    seconds: float
    windows_per_second: float  # one window of one channel counts as one


@dataclass
class FitResult:
    history: list[EpochStats] = field(default_factory=list)
    best_epoch: int = 0
    best_val_loss: float = math.inf
    seconds: float = 0.0  # wall time of all epochs, resumed ones included
    stopped_early: bool = False
    resumed_from_epoch: int = 0
    # the least-squares linear forecast alone ("epoch 0"), scored like the epochs; None when
    # the skip is trained by gradient
    linear_val_loss: float | None = None
    stopped: str | None = None  # why `fit`'s `stop` ended training before its epochs

    def metrics(self) -> dict[str, float]:
        """What a run records about its training, beside its scores."""
        out = {"best_epoch": self.best_epoch, "train_seconds": self.seconds}
        if self.linear_val_loss is not None:
            out["linear_skip_val_loss"] = self.linear_val_loss
        return out

    @property
    def windows_per_second(self) -> float:
        done = [h for h in self.history if h.windows_per_second > 0]
        return float(np.mean([h.windows_per_second for h in done])) if done else 0.0


def resolve_device(cfg: TrainConfig) -> torch.device:
    if cfg.device == "cuda" and not torch.cuda.is_available():
        raise TrainingError("train.device is 'cuda' but no CUDA device is visible; use 'auto'")
    if cfg.device == "cpu" or (cfg.device == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    return torch.device("cuda")


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def configure_threads(cfg: TrainConfig) -> int:
    threads = cfg.num_threads or available_cores()
    torch.set_num_threads(threads)
    return threads


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def loss_function(name: str, huber_delta: float | None = None
                  ) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """The loss `name`; huber's threshold is `huber_delta`, 1.0 (smooth L1) if None."""
    if name == "huber":
        return functools.partial(F.huber_loss, delta=1.0 if huber_delta is None else huber_delta)
    return {"mse": F.mse_loss, "mae": F.l1_loss}[name]


def make_scheduler(
    optimizer: torch.optim.Optimizer, cfg: TrainConfig, total_steps: int
) -> torch.optim.lr_scheduler.LRScheduler:
    if cfg.schedule == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=cfg.lr, total_steps=max(total_steps, 1),
            pct_start=max(cfg.warmup_frac, 0.01),
        )
    warmup = int(cfg.warmup_frac * total_steps)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if cfg.schedule == "constant":
            return 1.0
        progress = (step - warmup) / max(total_steps - warmup, 1)
        return 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


@torch.inference_mode()
def validation_loss(model: PatchTransformer, windows: WindowSet, batch_size: int,
                    loss_fn: Callable[..., torch.Tensor], device: torch.device,
                    dist: Dist = SINGLE) -> float:
    """Mean loss over `windows`; with a process group each rank scores its share and the sums
    are all-reduced, so every rank returns the same number."""
    model.eval()
    total, n = 0.0, 0
    for x, y in windows.batches(batch_size * dist.world, rank=dist.rank, world=dist.world):
        with _autocast(device):
            pred = model(x.to(device))
        total += float(loss_fn(pred.float(), y.to(device), reduction="sum"))
        n += y.numel()
    total, n = dist.sum_floats(total, n)
    return total / n


def _autocast(device: torch.device) -> Any:
    return torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else nullcontext()


class Checkpointer:
    """Saves the whole training state each epoch; loads it with weights_only=True."""

    def __init__(self, directory: Path, run_key: str) -> None:
        self.path = directory / CHECKPOINT
        self.run_key = run_key

    def save(self, state: dict[str, Any]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        torch.save({"run_key": self.run_key, **state}, tmp)
        tmp.replace(self.path)  # atomic: a kill mid-save leaves the previous checkpoint intact

    def load(self, warn: bool = True) -> dict[str, Any] | None:
        """The saved state of this run key, or None; `warn`: say why a file there is ignored
        (off for a look ahead of the load that will say it)."""
        if not self.path.is_file():
            return None
        try:
            state = torch.load(self.path, map_location="cpu", weights_only=True)
        except (pickle.UnpicklingError, EOFError, RuntimeError, ValueError) as err:
            # truncated, overwritten, or not a plain-tensor checkpoint (an I/O error is raised:
            # the file may be fine, and training afresh would replace it)
            if warn:
                log.warning("ignoring checkpoint %s: it cannot be read (%s: %s); training "
                            "starts afresh and replaces it", self.path, type(err).__name__,
                            str(err).splitlines()[0][:200] if str(err) else "")
            return None
        if not isinstance(state, dict) or state.get("run_key") != self.run_key:
            if warn:
                log.warning("ignoring checkpoint %s: it belongs to another config or dataset",
                            self.path)
            return None
        return state

    def clear(self) -> None:
        self.path.unlink(missing_ok=True)


class DeferredInterrupt:
    """Ctrl-C (SIGINT) or SIGTERM during training stops at the next batch boundary, never in
    the middle of a write (a tracking-database transaction, a checkpoint): an interrupt raised
    inside a SQLite transaction leaves the database locked, and the run could not then be
    marked KILLED. Schedulers stop jobs with SIGTERM (Kubernetes eviction, Airflow timeouts).
    A second signal stops at once; one that comes after the last check stops at the block's
    end."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.requested = False
        self.raised = False  # the KeyboardInterrupt a request asked for has been raised
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> DeferredInterrupt:
        # signal handlers can only be installed from the main thread
        if threading.current_thread() is threading.main_thread():
            self._previous = {sig: signal.signal(sig, self._handle) for sig in self.SIGNALS}
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested:
            self.raised = True
            raise KeyboardInterrupt
        self.requested = True
        log.warning("%s received: stopping at the next batch (again: at once)",
                    signal.Signals(signum).name)

    def check(self) -> None:
        if self.requested:
            self.raised = True
            raise KeyboardInterrupt

    def __exit__(self, exc_type: type[BaseException] | None, *exc: object) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)
        if self.requested and not self.raised and exc_type is None:
            raise KeyboardInterrupt  # the signal came after the last check


def fit(
    model: PatchTransformer,
    prepared: Prepared,
    cfg: TrainConfig,
    checkpoint_dir: Path,
    run_key: str,
    on_epoch: Callable[[EpochStats], None] | None = None,
    stop: Callable[[], str | None] | None = None,
    skip: SkipSlot | None = None,
) -> FitResult:
    """Train `model` in place on prepared's train windows; restore the best validation weights.
    `stop` is asked before every batch (by a single process: ranks would part ways): a reason
    it returns ends training there, as early stopping does (a search's time budget). `skip`:
    where a least-squares skip solved earlier for the same key is found, and this one is kept.

    In a process group (see forecast.distributed) every rank calls this with the same arguments:
    cfg.batch_size windows per rank and step, cfg.max_windows_per_epoch across all ranks."""
    dist = distributed.current()
    device = dist.device(resolve_device(cfg))
    distributed.check_backend(dist.backend(), device)
    configure_threads(cfg)
    seed_everything(cfg.seed)
    model.to(device)
    train, val = prepared.windows("train"), prepared.windows("val")
    per_epoch = min(len(train), cfg.max_windows_per_epoch or len(train))
    if dist.group:
        per_epoch = distributed.share(per_epoch, dist, "train.max_windows_per_epoch"
                                      if cfg.max_windows_per_epoch else "the training split")
    steps_per_epoch = math.ceil(per_epoch // dist.world / cfg.batch_size)
    # DDP averages the ranks' gradients at each backward; the raw model is what is saved
    net = torch.nn.parallel.DistributedDataParallel(
        model, device_ids=[device.index] if device.type == "cuda" else None) \
        if dist.group else model
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler = make_scheduler(optimizer, cfg, steps_per_epoch * cfg.epochs)
    loss_fn = loss_function(cfg.loss, cfg.huber_delta)
    val_fn = loss_function(cfg.loss if cfg.val_metric == "loss" else cfg.val_metric,
                           cfg.huber_delta)
    gen = torch.Generator().manual_seed(cfg.seed)
    min_history = model.cfg.shortest_history
    checkpoints = Checkpointer(checkpoint_dir, run_key)

    result = FitResult()
    best_state = copy.deepcopy(model.state_dict())
    bad_epochs, start_epoch = 0, 0
    # rank 0 alone reads the checkpoint (other nodes may not see its folder) and sends it
    saved = dist.broadcast_object(checkpoints.load() if dist.is_main else None) \
        if cfg.resume else None
    if saved is not None:
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        scheduler.load_state_dict(saved["scheduler"])
        gen.set_state(saved["generator"])
        torch.set_rng_state(saved["torch_rng"])
        best_state = saved["best_state"]
        bad_epochs, start_epoch = saved["bad_epochs"], saved["epoch"]
        result.history = [EpochStats(**h) for h in saved["history"]]
        result.best_epoch, result.best_val_loss = saved["best_epoch"], saved["best_val_loss"]
        result.seconds = saved["seconds"]
        result.linear_val_loss = saved.get("linear_val_loss")  # absent in older checkpoints
        result.resumed_from_epoch = start_epoch
        log.info("resumed from checkpoint %s after epoch %d", checkpoints.path, start_epoch)
    elif model.cfg.skip_fit == "least_squares":
        # solved here, not on resume (the checkpoint holds it); the closed-form linear forecast
        # is a candidate too: validation may prefer it to every trained epoch (best_epoch 0)
        solved = skip.get() if skip is not None else None
        if solved is None:
            fit_linear_skip(model, train, pad_augment=cfg.pad_augment, seed=cfg.seed, dist=dist)
            result.best_val_loss = validation_loss(model, val, cfg.batch_size, val_fn, device,
                                                   dist)
            if skip is not None:
                skip.put(model, result.best_val_loss)
        else:
            solved.apply(model)
            result.best_val_loss = solved.val_loss
            log.info("linear skip: the solution already found for this lookback and these "
                     "skip settings")
        best_state = copy.deepcopy(model.state_dict())
        result.linear_val_loss = result.best_val_loss
        log.info("epoch 0 (least-squares linear skip alone): val_loss %.4f", result.best_val_loss)

    show = dist.is_main and (sys.stderr.isatty() if cfg.progress is None else cfg.progress)
    channels = prepared.n_channels
    with DeferredInterrupt() as interrupt:
        for epoch in range(start_epoch + 1, cfg.epochs + 1):
            model.train()
            if dist.group:
                # dropout differs between ranks (nanoGPT's seed_offset), and a resumed epoch
                # draws as the uninterrupted one would: no per-rank state to checkpoint
                torch.manual_seed(hash((cfg.seed, dist.rank, epoch)) % 2**63)  # ints: no salt
            t0 = time.perf_counter()
            total, seen = 0.0, 0
            bar = tqdm(total=steps_per_epoch, desc=f"epoch {epoch}/{cfg.epochs}", disable=not show,
                       leave=False, file=sys.stderr)
            for x, y in train.batches(cfg.batch_size * dist.world, shuffle=True, generator=gen,
                                      limit=per_epoch, rank=dist.rank, world=dist.world):
                interrupt.check()
                if stop is not None and (reason := stop()):
                    result.stopped = f"{reason} in epoch {epoch}"
                    break
                # drawn for the whole step's batch, as one process draws it; this rank's share
                mask = random_pad_mask(len(x) * dist.world, x.shape[1], min_history,
                                       cfg.pad_augment, gen)
                if mask is not None and dist.world > 1:
                    mask = mask[dist.rank::dist.world]
                x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
                with _autocast(device):
                    pred = net(x, None if mask is None else mask.to(device))
                loss = loss_fn(pred.float(), y)
                if not torch.isfinite(loss):
                    raise TrainingError(
                        f"training loss became {loss.item()} in epoch {epoch}; lower train.lr or "
                        "set train.grad_clip"
                    )
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if cfg.grad_clip:
                    torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
                try:
                    optimizer.step()
                except RuntimeError as err:  # lr * update beyond float32 (lr near 1e38)
                    if "overflow" not in str(err):
                        raise
                    raise TrainingError(f"the optimizer step overflowed in epoch {epoch}; "
                                        "lower train.lr") from None
                scheduler.step()
                total += loss.item() * len(x)
                seen += len(x)
                bar.update(1)
                bar.set_postfix(loss=f"{total / seen:.4f}")
            bar.close()
            if result.stopped:  # the partial epoch is not scored: the best whole one is kept
                log.info("stopped: %s; keeping epoch %d (val_loss %.4f)", result.stopped,
                         result.best_epoch, result.best_val_loss)
                break
            total, seen = dist.sum_floats(total, seen)  # every rank's windows
            train_seconds = time.perf_counter() - t0
            # the training batch size: larger batches measured slower on CPU and raised peak RSS
            val_loss = validation_loss(model, val, cfg.batch_size, val_fn, device, dist)
            seconds = time.perf_counter() - t0
            stats = EpochStats(epoch, total / max(seen, 1), val_loss,
                               optimizer.param_groups[0]["lr"], seconds,
                               seen * channels / max(train_seconds, 1e-9))
            result.history.append(stats)
            result.seconds += seconds
            if val_loss < result.best_val_loss:
                result.best_val_loss, result.best_epoch = val_loss, epoch
                best_state = copy.deepcopy(model.state_dict())
                bad_epochs = 0
            else:
                bad_epochs += 1
            if dist.is_main:
                log.info("epoch %d: train_loss %.4f val_loss %.4f lr %.2e %.1fs", epoch,
                         stats.train_loss, val_loss, stats.lr, seconds)
                # Save before the callback: an epoch that finished is kept even if the callback
                # (MLflow logging, a Ctrl-C) raises.
                checkpoints.save({
                    "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(), "generator": gen.get_state(),
                    "torch_rng": torch.get_rng_state(), "best_state": best_state,
                    "bad_epochs": bad_epochs, "epoch": epoch,
                    "history": [vars(h) for h in result.history], "best_epoch": result.best_epoch,
                    "best_val_loss": result.best_val_loss, "seconds": result.seconds,
                    "linear_val_loss": result.linear_val_loss,
                })
            if on_epoch is not None:
                on_epoch(stats)
            interrupt.check()
            if cfg.patience and bad_epochs >= cfg.patience:
                result.stopped_early = True
                break
    model.load_state_dict(best_state)
    model.eval()
    if dist.is_main:
        checkpoints.clear()
    return result
