"""A run's local files: staged, published whole under a lock, and what killed runs leave."""

from __future__ import annotations

import multiprocessing
import os
import socket
import subprocess
import sys
from pathlib import Path

from forecast import outputs


def _staged(folder: Path, tag: str) -> Path:
    staging = outputs.stage(folder)
    (staging / outputs.MODEL).mkdir()
    (staging / outputs.MODEL / "weights").write_text(tag)
    for name in outputs.FILES:
        (staging / name).write_text(tag)
    return staging


def _published(folder: Path) -> list[str]:
    return [(folder / outputs.MODEL / "weights").read_text(),
            *[(folder / name).read_text() for name in outputs.FILES]]


def _publish_many(folder: Path, who: str, times: int) -> None:
    for i in range(times):
        outputs.publish(_staged(folder, f"{who}{i}"), folder)


def test_publish_replaces_the_whole_set_and_leaves_nothing_behind(tmp_path: Path) -> None:
    outputs.publish(_staged(tmp_path, "first"), tmp_path)
    outputs.publish(_staged(tmp_path, "second"), tmp_path)
    assert _published(tmp_path) == ["second"] * 3
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        outputs.LOCK, "config.yaml", "metrics.json", "model"]


def test_runs_publishing_at_once_never_mix_or_fail(tmp_path: Path) -> None:
    ctx = multiprocessing.get_context("spawn")
    jobs = [ctx.Process(target=_publish_many, args=(tmp_path, who, 200)) for who in "ab"]
    for job in jobs:
        job.start()
    for job in jobs:
        job.join(120)
    assert [job.exitcode for job in jobs] == [0, 0]  # unlocked, one failed: Directory not empty
    final = _published(tmp_path)
    assert final[0] in ("a199", "b199") and final == [final[0]] * 3
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith((".staging", ".repl"))]


def test_a_publish_killed_between_its_renames_gets_its_model_back(tmp_path: Path) -> None:
    outputs.publish(_staged(tmp_path, "good"), tmp_path)
    # what a kill after the first rename leaves: model/ moved aside, nothing in its place
    aside = tmp_path / ".replaced-killed"
    aside.mkdir()
    os.replace(tmp_path / outputs.MODEL, aside / outputs.MODEL)
    outputs.discard(outputs.stage(tmp_path))  # the next run starts (and fails)
    assert _published(tmp_path) == ["good"] * 3 and not aside.exists()


def test_staging_folders_of_dead_processes_on_this_host_are_swept(tmp_path: Path) -> None:
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    host = socket.gethostname()
    dead = tmp_path / f".staging-{gone.stdout.strip()}@{host}-abc123"
    live = tmp_path / f".staging-{os.getpid()}@{host}-def456"
    elsewhere = tmp_path / f".staging-{gone.stdout.strip()}@not-{host}-ghi789"
    for folder in (dead, live, elsewhere):
        (folder / outputs.MODEL).mkdir(parents=True)
    mine = outputs.stage(tmp_path)
    assert not dead.exists() and live.exists() and elsewhere.exists() and mine.exists()
