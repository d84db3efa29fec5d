"""The process group a training run may be one rank of (torchrun, or any launcher that starts
N processes and sets RANK / WORLD_SIZE / LOCAL_RANK / MASTER_ADDR / MASTER_PORT).

Training asks `current()` which rank it is. Without a process group that is `SINGLE`, whose
collectives do nothing, so one process trains exactly as it did before there were ranks. Only
the command line starts a group, from the launcher's variables (`process_group`); a launcher
that initialised one itself (Spark TorchDistributor, Ray, a PyTorchJob's own code) is used as
it is.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as torch_dist

from forecast.errors import ConfigError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Dist:
    """This process's place in the run: rank `rank` of `world`; `group`: a process group is
    initialised (the model is then wrapped in DistributedDataParallel, even with one rank)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    group: bool = False

    @property
    def is_main(self) -> bool:
        """The one rank that touches the outside world: MLflow, checkpoints, outputs, locks."""
        return self.rank == 0

    def device(self, device: torch.device) -> torch.device:
        """`device` for this rank: its own GPU (LOCAL_RANK) on a node with several."""
        if device.type == "cuda" and self.group:
            return torch.device("cuda", self.local_rank)
        return device

    def all_reduce_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """`tensor` summed over every rank, in place (and returned); itself without a group."""
        if self.group:
            torch_dist.all_reduce(tensor, op=torch_dist.ReduceOp.SUM)
        return tensor

    def sum_floats(self, *values: float) -> tuple[float, ...]:
        """Each value summed over every rank (float64, one collective for all of them)."""
        if not self.group:
            return values
        device = torch.device("cuda", self.local_rank) if self.backend() == "nccl" \
            else torch.device("cpu")
        summed = self.all_reduce_sum(torch.tensor(values, dtype=torch.float64, device=device))
        return tuple(summed.tolist())

    def broadcast_object(self, obj: Any = None, src: int = 0) -> Any:
        """Rank `src`'s `obj` on every rank (pickled; tensors come back on the CPU)."""
        if not self.group:
            return obj
        box = [obj]
        device = torch.device("cuda", self.local_rank) if self.backend() == "nccl" else None
        torch_dist.broadcast_object_list(box, src=src, device=device)
        return box[0]

    def backend(self) -> str | None:
        return str(torch_dist.get_backend()) if self.group else None


SINGLE = Dist()


def current() -> Dist:
    """The initialised process group's view of this process, else `SINGLE`."""
    if not (torch_dist.is_available() and torch_dist.is_initialized()):
        return SINGLE
    # LOCAL_RANK is set by torchrun and the launchers; a group made without it has one per node
    return Dist(torch_dist.get_rank(), torch_dist.get_world_size(),
                int(os.environ.get("LOCAL_RANK", "0")), group=True)


def launched() -> bool:
    """Whether a launcher started this process as one rank of several (nanoGPT's test)."""
    return int(os.environ.get("RANK", "-1")) != -1


def restarted() -> bool:
    """Whether torchrun's agent restarted this job's processes (--max-restarts) after a rank
    died: the same job goes on."""
    return int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")) > 0


@contextmanager
def process_group(device: torch.device) -> Iterator[Dist]:
    """This process's `Dist` for a block: a group initialised from the launcher's variables
    (gloo for CPU training, nccl for CUDA) and destroyed at the block's end; the launcher's own
    group if it made one; `SINGLE` when no launcher started us."""
    if torch_dist.is_available() and torch_dist.is_initialized():
        dist = current()
        check_backend(dist.backend(), device)
        yield dist
        return
    if not launched():
        yield SINGLE
        return
    missing = [v for v in ("WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT") if v not in os.environ]
    if missing:
        raise ConfigError(f"RANK is set but {', '.join(missing)} is not: start the ranks with "
                          "torchrun (or a launcher that sets all of them)")
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    _init_group(backend)
    dist = current()
    log.debug("rank %d of %d (%s)", dist.rank, dist.world, backend)
    try:
        yield dist
    finally:
        torch_dist.destroy_process_group()


def _init_group(backend: str) -> None:
    """init_process_group from the launcher's variables. After a torchrun restart whose ranks
    share the agent's store (its default), that store still holds the dead attempt's addresses
    under the same keys, and a restarted gloo rank dials its predecessor ("connectFullMesh
    failed ... Connection refused", pytorch/pytorch#135712): the group's keys are then kept
    apart per restart, which every rank of the attempt counts alike."""
    if not restarted() or os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != "True":
        torch_dist.init_process_group(backend)
        return
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    store = torch_dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]),
                                world, is_master=False)
    attempt = os.environ["TORCHELASTIC_RESTART_COUNT"]
    torch_dist.init_process_group(backend, store=torch_dist.PrefixStore(
        f"forecast/restart-{attempt}", store), rank=rank, world_size=world)


def check_backend(backend: str | None, device: torch.device) -> None:
    """A launcher's group must suit the training device: nccl moves CUDA tensors only."""
    if backend == "nccl" and device.type != "cuda":
        raise ConfigError("the process group's backend is nccl, which needs CUDA, but "
                          f"train.device resolves to {device.type}; initialise the group with "
                          "gloo, or train on CUDA")


def share(windows: int, dist: Dist, field: str) -> int:
    """The windows per epoch every rank can take an equal share of: `windows` rounded down to
    a multiple of the world size (at most world - 1 fewer), so that every rank takes the same
    number of optimiser steps (DDP's all-reduce waits for every rank at every step)."""
    if windows < dist.world:
        raise ConfigError(f"{field}: {windows} training windows per epoch cannot be shared by "
                          f"{dist.world} processes (WORLD_SIZE); use fewer processes or more "
                          "windows")
    return windows - windows % dist.world


@dataclass(frozen=True)
class Go:
    """Rank 0's word that training starts: the data's digest and MLflow run (if any) it uses."""

    data_digest: str
    run_id: str | None = None


@dataclass(frozen=True)
class Stop:
    """Rank 0's word that there is nothing to train (the job skipped, or failed: `error`)."""

    error: str | None = None


class Leader:
    """Rank 0's side of the start: sends `Go` once, just before training, or `Stop` when the
    block ends without having sent it, so that the other ranks never wait for nothing."""

    def __init__(self, dist: Dist) -> None:
        self.dist = dist
        self.sent = False

    def go(self, data_digest: str, run_id: str | None = None) -> None:
        if not self.sent:
            self.dist.broadcast_object(Go(data_digest, run_id))
            self.sent = True

    def __enter__(self) -> Leader:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: object) -> None:
        if self.sent or not self.dist.group:
            return
        self.sent = True
        try:
            self.dist.broadcast_object(Stop(None if exc is None
                                            else f"{type(exc).__name__}: {exc}"))
        except Exception as err:  # the group itself may be what failed; keep the first error
            log.error("could not tell the other ranks to stop: %s", err)


def await_start(dist: Dist) -> Go | Stop:
    """A rank other than 0: rank 0's `Go` or `Stop`."""
    word = dist.broadcast_object(None)
    if not isinstance(word, Go | Stop):
        raise TypeError(f"rank 0 sent {word!r}, not Go or Stop")
    return word
