"""Real servers for the end-to-end tests and benchmarks/tracking_server.py: a throwaway
PostgreSQL cluster (initdb + pg_ctl, as the `postgres` user when run as root) and an
`mlflow server` process on 127.0.0.1, each on a free port picked at start."""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests

MLFLOW = str(Path(sys.executable).parent / "mlflow")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def pg_bin() -> Path | None:
    """The newest PostgreSQL's bin folder (Debian's layout), or the one on PATH."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"),
                   key=lambda p: int(Path(p).parent.parent.name))
    if found:
        return Path(found[-1]).parent
    on_path = shutil.which("initdb")
    return Path(on_path).parent if on_path else None


def tree_rss(pid: int) -> int:
    """Resident bytes of a process and all its descendants, now (0 once it is gone)."""
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
            for task in Path(f"/proc/{p}/task").iterdir():
                children = (task / "children").read_text().split()
                todo.extend(int(c) for c in children)
        except OSError:
            continue
    return total


class Postgres:
    """One PostgreSQL cluster in `root`, trust authentication on 127.0.0.1 only."""

    def __init__(self) -> None:
        bin_dir = pg_bin()
        if bin_dir is None:
            raise RuntimeError("PostgreSQL is not installed (no initdb): apt-get install "
                               "postgresql")
        # a folder of its own under /tmp: pytest's are private to the user running the tests
        root = Path(tempfile.mkdtemp(prefix="forecast-pg-"))
        self.bin, self.root, self.port = bin_dir, root, free_port()
        self.data = root / "pgdata"
        as_root = os.geteuid() == 0
        # PostgreSQL refuses to run as root: hand the folder to `postgres`
        self._prefix = ["runuser", "-u", "postgres", "--"] if as_root else []
        if as_root:
            shutil.chown(root, "postgres")
        self._run(self.bin / "initdb", "-D", str(self.data), "-U", "postgres", "-A", "trust",
                  "--no-sync", "-E", "UTF8")
        self.start()
        self._run(self.bin / "createdb", "-h", "127.0.0.1", "-p", str(self.port), "-U",
                  "postgres", "mlflow")

    def _run(self, *cmd: object) -> None:
        proc = subprocess.run([*self._prefix, *map(str, cmd)], capture_output=True, text=True,
                              timeout=120)
        if proc.returncode != 0:
            raise RuntimeError(f"{Path(str(cmd[0])).name} failed ({proc.returncode}): "
                               f"{proc.stderr.strip() or proc.stdout.strip()}")

    @property
    def uri(self) -> str:
        return f"postgresql+psycopg2://postgres@127.0.0.1:{self.port}/mlflow"

    def start(self) -> None:
        options = (f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.root} "
                   "-c fsync=off -c synchronous_commit=off -c full_page_writes=off "
                   "-c max_connections=200")
        self._run(self.bin / "pg_ctl", "-D", self.data, "-o", options, "-l",
                  self.root / "postgres.log", "-w", "-t", "60", "start")

    def stop(self) -> None:
        self._run(self.bin / "pg_ctl", "-D", self.data, "-m", "fast", "-w", "stop")

    def remove(self) -> None:
        """Stop it and delete its files."""
        with contextlib.suppress(RuntimeError):
            self.stop()
        shutil.rmtree(self.root, ignore_errors=True)

    def pid(self) -> int:
        return int((self.data / "postmaster.pid").read_text().split()[0])

    def log(self) -> str:
        return (self.root / "postgres.log").read_text(errors="replace")


class MlflowServer:
    """`mlflow server` over `backend` with proxied artifacts (--serve-artifacts): clients need
    only the http:// URI. `env` adds server-side settings (e.g. S3 credentials)."""

    def __init__(self, backend: str, artifacts: str, root: Path, workers: int = 2,
                 env: dict[str, str] | None = None) -> None:
        self.backend, self.artifacts, self.root = backend, artifacts, root
        self.workers, self.env = workers, env or {}
        self.port = free_port()
        self.proc: subprocess.Popen | None = None
        root.mkdir(parents=True, exist_ok=True)
        self.start()

    @property
    def uri(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 120) -> None:
        log = open(self.root / "mlflow-server.log", "ab")  # noqa: SIM115 (the process keeps it)
        self.proc = subprocess.Popen(
            [MLFLOW, "server", "--backend-store-uri", self.backend, "--artifacts-destination",
             self.artifacts, "--serve-artifacts", "--host", "127.0.0.1", "--port",
             str(self.port), "--workers", str(self.workers)],
            stdout=log, stderr=subprocess.STDOUT, cwd=self.root,
            env={**os.environ, **self.env}, start_new_session=True)
        log.close()
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"mlflow server exited {self.proc.returncode}:\n"
                                   f"{self.log()[-3000:]}")
            try:
                if requests.get(f"{self.uri}/health", timeout=2).ok:
                    return
            except requests.RequestException:
                pass
            time.sleep(0.3)
        self.stop()
        raise RuntimeError(f"mlflow server did not answer in {timeout}s:\n{self.log()[-3000:]}")

    def stop(self, sig: int = signal.SIGTERM) -> None:
        """Stop the server and its workers (its own process group)."""
        if self.proc is None or self.proc.poll() is not None:
            return
        os.killpg(self.proc.pid, sig)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=30)

    def log(self) -> str:
        return (self.root / "mlflow-server.log").read_text(errors="replace")


def wait_until_up(url: str, proc: subprocess.Popen, timeout: float = 120) -> None:
    """Poll `url` until it answers 200; fail with the process's output if it exits first."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            if requests.get(url, timeout=2).status_code == 200:
                return
        except requests.RequestException:
            pass
        if proc.poll() is not None:
            out = proc.stdout.read().decode(errors="replace") if proc.stdout else ""
            raise RuntimeError(f"{proc.args} exited {proc.returncode}:\n{out[-3000:]}")
        time.sleep(0.3)
    raise RuntimeError(f"{url} did not answer in {timeout}s")


class Service:
    """`forecast serve --model MODEL` in a process of its own on a free port, given only
    MLFLOW_TRACKING_URI (plus `env`); a context manager that stops it."""

    def __init__(self, model: str, tracking_uri: str, *flags: str,
                 env: dict[str, str] | None = None) -> None:
        self.port = free_port()
        self.proc = subprocess.Popen(
            [str(Path(sys.executable).parent / "forecast"), "serve", "--model", model,
             "--host", "127.0.0.1", "--port", str(self.port), *flags],
            env={**os.environ, **(env or {}), "MLFLOW_TRACKING_URI": tracking_uri},
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        try:
            wait_until_up(f"{self.url}/readyz", self.proc)
        except BaseException:
            self.stop()
            raise

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=30)

    def __enter__(self) -> Service:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
