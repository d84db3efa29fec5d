"""Training on several processes: real torchrun ranks over gloo on 127.0.0.1 against one
process, the MLflow side of a distributed job, and a rank killed and restarted mid-epoch."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.distributed as torch_dist
from mlflow import MlflowClient

from forecast.config import dump_config
from forecast.distributed import SINGLE, Dist, check_backend, current, share
from forecast.errors import ConfigError
from forecast.train import CHECKPOINT
from forecast.windows import Prepared
from tests.distributed_worker import fit_tiny
from tests.tracked import EXPERIMENT, NAME, config, series_csv

ROOT = Path(__file__).resolve().parents[1]
# 2 ranks x 8 windows against 1 process x 16, after 16 AdamW steps: float32 sums in another
# order (the ranks' gradients are averaged after the backward) leave weights ~1e-7 apart
WEIGHT_TOLERANCE = 1e-5


def weight_gap(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    """Largest difference between two models' weights, but for the attention keys' bias: its
    gradient is zero in exact arithmetic (softmax ignores a shift shared by all keys), so Adam,
    which divides by the gradient's own size, turns rounding noise into lr-sized steps there."""
    gaps = []
    for key, value in a.items():
        other = b[key]
        if key.endswith("attn.qkv.bias"):  # [query | key | value] biases
            d = len(value) // 3
            value, other = torch.cat([value[:d], value[2 * d:]]), \
                torch.cat([other[:d], other[2 * d:]])
        gaps.append(float((value - other).abs().max()))
    return max(gaps)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(*args: str, restarts: int = 0) -> subprocess.Popen:
    """Two ranks of `args` under torchrun, rendezvous on a free port of 127.0.0.1."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    return subprocess.Popen(
        [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc-per-node",
         "2", "--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{free_port()}",
         "--local-addr", "127.0.0.1", "--max-restarts", str(restarts), "--monitor-interval",
         "0.2", *args],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def finish(proc: subprocess.Popen, timeout: float = 240) -> str:
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        for pid in [*workers(proc.pid).values(), proc.pid]:
            os.kill(pid, signal.SIGKILL)
        out, _ = proc.communicate()
        raise AssertionError(f"torchrun still running after {timeout:.0f}s:\n"
                             f"{out[-6000:]}") from None
    assert proc.returncode == 0, out[-4000:]
    return out


def test_batches_split_into_rank_shares_that_make_up_the_single_process_batch(
        tiny_prepared: Prepared) -> None:
    train = tiny_prepared.windows("train")

    def targets(rank: int, world: int) -> list[torch.Tensor]:
        gen = torch.Generator().manual_seed(3)
        return [y for _, y in train.batches(10, shuffle=True, generator=gen, limit=40,
                                            rank=rank, world=world)]

    whole = targets(0, 1)
    shares = [targets(r, 2) for r in range(2)]
    assert len(whole) == len(shares[0]) == len(shares[1]) == 4
    for batch, a, b in zip(whole, *shares, strict=True):
        assert len(a) == len(b) == 5
        assert torch.equal(torch.stack([a, b], 1).flatten(0, 1), batch)  # interleaved


def test_world_larger_than_the_windows_or_nccl_without_cuda_is_a_one_line_error() -> None:
    assert share(7, Dist(rank=0, world=2, group=True), "train.max_windows_per_epoch") == 6
    with pytest.raises(ConfigError, match=r"^train.max_windows_per_epoch: 3 training windows "
                       r"per epoch cannot be shared by 4 processes"):
        share(3, Dist(rank=0, world=4, group=True), "train.max_windows_per_epoch")
    with pytest.raises(ConfigError, match="backend is nccl, which needs CUDA"):
        check_backend("nccl", torch.device("cpu"))
    check_backend("gloo", torch.device("cpu"))


@pytest.fixture
def group_of_one():
    """A real gloo process group of one rank, destroyed afterwards."""
    torch_dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{free_port()}",
                                  rank=0, world_size=1)
    try:
        yield
    finally:
        torch_dist.destroy_process_group()


def test_one_rank_in_a_process_group_trains_bit_for_bit_as_one_process(
        tmp_path: Path, group_of_one: None) -> None:
    # DDP wrapping, all-reduced losses and skip equations, sharded batches, rank-0 checkpoints:
    # with one rank every one of them must leave the numbers exactly as no group does
    assert current().group and current().world == 1
    grouped = fit_tiny(16, tmp_path / "a")
    torch_dist.destroy_process_group()
    assert current() == SINGLE
    alone = fit_tiny(16, tmp_path / "b")
    torch_dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{free_port()}",
                                  rank=0, world_size=1)  # for the fixture to destroy
    assert grouped["history"] == alone["history"]
    assert grouped["linear_val_loss"] == alone["linear_val_loss"]
    for weights in ("trained", "state"):
        for key, value in alone[weights].items():
            assert torch.equal(grouped[weights][key], value), key


@pytest.mark.slow
def test_two_ranks_with_batch_b_equal_one_process_with_batch_2b(tmp_path: Path) -> None:
    finish(torchrun("tests/distributed_worker.py", str(tmp_path), "8"))
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    single = fit_tiny(16, tmp_path / "single")
    half = fit_tiny(8, tmp_path / "half")

    for weights in ("trained", "state"):  # the ranks hold one model
        for key, value in ranks[0][weights].items():
            assert torch.equal(ranks[1][weights][key], value), key
    # the least-squares skip is solved on the whole training set, not on a rank's share
    for key in ("skip.weight", "skip.bias"):
        torch.testing.assert_close(ranks[0]["state"][key], single["state"][key],
                                   rtol=0, atol=1e-6)
    assert ranks[0]["linear_val_loss"] == pytest.approx(single["linear_val_loss"], rel=1e-6)
    # two steps of b make one step of 2b, so the weights after 16 steps agree
    assert weight_gap(ranks[0]["trained"], single["trained"]) < WEIGHT_TOLERANCE
    # while one process with batch b (twice the steps) lands elsewhere: the check can fail
    assert weight_gap(half["trained"], single["trained"]) > 100 * WEIGHT_TOLERANCE
    # losses are reduced over the ranks: every epoch's train and val loss is the 2b run's
    for (train_d, val_d), (train_s, val_s) in zip(ranks[0]["history"], single["history"],
                                                  strict=True):
        assert train_d == pytest.approx(train_s, rel=1e-5)
        assert val_d == pytest.approx(val_s, rel=1e-5)
    assert ranks[0]["state"].keys() == single["state"].keys()  # unwrapped: no "module." prefix
    assert not (tmp_path / "checkpoints" / CHECKPOINT).exists()  # rank 0 cleared its own


def job(tmp_path: Path, **train: object) -> tuple[str, Path, MlflowClient]:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    csv = series_csv(tmp_path / "series.csv", n=3000)
    cfg_path = tmp_path / "job.yaml"
    cfg_path.write_text(dump_config(config(tmp_path, csv, train=train)))
    return uri, cfg_path, MlflowClient(tracking_uri=uri, registry_uri=uri)


def only_run(client: MlflowClient):
    exp = client.get_experiment_by_name(EXPERIMENT)
    runs = client.search_runs([exp.experiment_id])
    assert len(runs) == 1, [(r.info.run_id, r.info.status) for r in runs]
    assert len(client.search_model_versions(f"name = '{NAME}'")) == 1
    return runs[0]


def steps(client: MlflowClient, run_id: str, metric: str) -> list[int]:
    return sorted(m.step for m in client.get_metric_history(run_id, metric))


@pytest.mark.slow
def test_a_distributed_job_leaves_one_run_one_version_and_one_set_of_outputs(
        tmp_path: Path) -> None:
    uri, cfg_path, client = job(tmp_path, epochs=2)
    out = finish(torchrun("-m", "forecast", "pipeline", "train", "--config", str(cfg_path),
                          "--tracking-uri", uri))
    run = only_run(client)
    assert run.info.status == "FINISHED"
    assert steps(client, run.info.run_id, "val_loss") == [1, 2]
    assert out.count("metrics: ") == 1  # one report, rank 0's
    assert sorted(p.name for p in (tmp_path / "outputs").iterdir()) == ["locks", "tiny"]
    assert (tmp_path / "outputs" / "tiny" / "model").is_dir()


def workers(agent: int) -> dict[int, int]:
    """Rank → pid of the torchrun agent's worker processes."""
    children = Path(f"/proc/{agent}/task/{agent}/children").read_text().split()
    ranks = {}
    for pid in map(int, children):
        try:
            env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:  # exited meanwhile
            continue
        rank = [e for e in env if e.startswith(b"RANK=")]
        if rank:
            ranks[int(rank[0].removeprefix(b"RANK="))] = pid
    return ranks


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="reads /proc (Linux)")
def test_a_rank_killed_mid_epoch_restarts_and_finishes_as_the_same_run(tmp_path: Path) -> None:
    epochs = 5
    # small steps, so that an epoch lasts long enough to be interrupted in the middle
    uri, cfg_path, client = job(tmp_path, epochs=epochs, batch_size=4,
                                max_windows_per_epoch=1536)
    # one restart is what the kill needs; a second absorbs a restarted attempt whose gloo mesh
    # fails to connect on a loaded machine (seen once: "connectFullMesh: Connection refused")
    proc = torchrun("-m", "forecast", "pipeline", "train", "--config", str(cfg_path),
                    "--tracking-uri", uri, restarts=2)
    checkpoint = tmp_path / "outputs" / "tiny" / "checkpoints" / CHECKPOINT
    deadline = time.monotonic() + 180
    while not checkpoint.exists():  # epoch 1 is done
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()[0]
        time.sleep(0.05)
    os.kill(workers(proc.pid)[1], signal.SIGKILL)
    # the agent stops the surviving rank (SIGTERM, then SIGKILL after its grace period) before
    # it restarts both: allow for that on a loaded machine
    out = finish(proc, timeout=480)

    assert "continuing run" in out and "after a restart" in out
    run = only_run(client)
    assert run.info.status == "FINISHED"
    resumed = int(run.data.tags["train.resumed_from_epoch"])
    assert 1 <= resumed < epochs
    for metric in ("val_loss", "train_loss"):  # every epoch logged once: none lost or doubled
        assert steps(client, run.info.run_id, metric) == list(range(1, epochs + 1))
    assert "error" not in run.data.tags
