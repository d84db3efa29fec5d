"""Saving a benchmark's result: one JSON file per benchmark under benchmarks/results/.

Every script under benchmarks/ calls `start(name)` when it begins (the machine's load is read
then) and `finish(run, results)` at its end, which writes `benchmarks/results/<name>.json`
(or the path given by the script's `--results` flag, see `add_argument`) and then prints the
results as the script's last stdout line, one JSON object or list:

    {"benchmark": name, "commit": "<sha>[+dirty]" or null, "date": UTC ISO 8601,
     "machine": {"cores", "cpu", "gpu", "memory_gb", "load_average_1m"},
     "command": the argv, shell-quoted, "results": what the script printed last}

`docs/render.py` reads these files to write the docs' tables.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shlex
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS_DIR = ROOT / "benchmarks" / "results"


def add_argument(parser: argparse.ArgumentParser, name: str) -> None:
    """The `--results PATH` flag every benchmark takes."""
    parser.add_argument("--results", type=Path, default=RESULTS_DIR / f"{name}.json",
                        metavar="PATH",
                        help=f"where to save the result as JSON (default: {default_path(name)})")


def default_path(name: str) -> str:
    return str((RESULTS_DIR / f"{name}.json").relative_to(ROOT))


def commit() -> str | None:
    """HEAD's sha, with "+dirty" when tracked files differ from it; None outside git."""
    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True,
                              check=True, timeout=30).stdout.strip()
    try:
        sha = git("rev-parse", "HEAD")
        dirty = git("status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.SubprocessError):
        return None
    return sha + ("+dirty" if dirty else "")


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def gpu_name() -> str | None:
    try:
        import torch
    except ImportError:
        return None
    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else None


def memory_gb() -> float | None:
    try:
        return round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    except (AttributeError, ValueError, OSError):
        return None


def cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def machine() -> dict[str, Any]:
    return {"cores": cores(), "cpu": cpu_model(), "gpu": gpu_name(), "memory_gb": memory_gb(),
            "load_average_1m": round(os.getloadavg()[0], 2)}


@dataclass
class Run:
    """What is known of a benchmark run when it starts; `finish` adds its results."""

    benchmark: str
    commit: str | None
    date: str
    machine: dict[str, Any]
    command: str
    extra: dict[str, Any] = field(default_factory=dict)

    def envelope(self, results: Any) -> dict[str, Any]:
        return {"benchmark": self.benchmark, "commit": self.commit, "date": self.date,
                "machine": self.machine, "command": self.command, **self.extra,
                "results": results}


def start(name: str, argv: list[str] | None = None) -> Run:
    """Note the commit, the time, the machine and its load, and the command, now."""
    argv = sys.argv if argv is None else argv
    script = Path(argv[0])
    if script.is_absolute() and script.is_relative_to(ROOT):
        argv = [str(script.relative_to(ROOT)), *argv[1:]]
    now = datetime.datetime.now(datetime.UTC).replace(microsecond=0)
    return Run(name, commit(), now.isoformat().replace("+00:00", "Z"), machine(),
               shlex.join(["python", *argv]))


def save(path: Path, document: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document, indent=2) + "\n")


def finish(run: Run, results: Any, path: Path) -> None:
    """Write the results file, then print the results as the last stdout line."""
    save(path, run.envelope(results))
    print(f"saved {path}", file=sys.stderr)
    print(json.dumps(results), flush=True)


def load(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text())
