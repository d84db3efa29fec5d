"""Many training jobs at once against one `mlflow server` on PostgreSQL (or SQLite).

Phase 1: `--same` jobs train the same registered model with different learning rates and
seeds; every job must exit 0, every version must record its gate decision, and exactly one
version must hold `champion`: the best by the gate's metric. Phase 2: `--models` jobs train
as many different models at once. Reports wall times and the peak resident memory of the
server (all its workers) and of PostgreSQL (all its backends), sampled every 0.2 s.

    python benchmarks/tracking_server.py                   # 8 + 16 jobs, PostgreSQL
    python benchmarks/tracking_server.py --same 2 --models 1 --tracking-uri http://... \
        --watch server=PID --results /tmp/smoke.json   # against a server already running

Prints a table, then one JSON object as its last line; saves it with benchmarks/record.py to
benchmarks/results/tracking_server.json (--results).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from mlflow import MlflowClient  # noqa: E402

from benchmarks import record  # noqa: E402
from forecast.config import dump_config  # noqa: E402
from tests.servers import MlflowServer, Postgres, tree_rss  # noqa: E402
from tests.tracked import config, series_csv  # noqa: E402

FORECAST = str(Path(sys.executable).parent / "forecast")


class PeakRss(threading.Thread):
    """The largest resident size seen of each process tree, sampled until stopped."""

    def __init__(self, pids: dict[str, int]) -> None:
        super().__init__(daemon=True)
        self.pids, self.peak = pids, dict.fromkeys(pids, 0)
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.wait(0.2):
            for name, pid in self.pids.items():
                self.peak[name] = max(self.peak[name], tree_rss(pid))


def run_jobs(configs: list[Path], uri: str) -> tuple[float, list[int]]:
    """Start every job at once; wall seconds until the last ends, and their exit codes."""
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri}
    start = time.perf_counter()
    procs = [subprocess.Popen([FORECAST, "train", "--config", str(c), "--set",
                               "train.progress=false"], env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE) for c in configs]
    codes = []
    for proc in procs:
        _, err = proc.communicate(timeout=1800)
        if proc.returncode != 0:
            print(err.decode()[-2000:], file=sys.stderr)
        codes.append(proc.returncode)
    return time.perf_counter() - start, codes


def write_configs(root: Path, csv: Path, n: int, same_model: bool) -> list[Path]:
    paths = []
    for i in range(n):
        name = "shared-model" if same_model else f"model-{i}"
        cfg = config(root / f"job{i}", csv, train={"lr": 0.002 * (i + 1), "seed": i,
                                                   "epochs": 1},
                     tracking={"experiment": "concurrency", "registered_model": name})
        path = root / f"{'same' if same_model else 'many'}-{i}.yaml"
        path.write_text(dump_config(cfg))
        paths.append(path)
    return paths


def check_gate(client: MlflowClient, name: str) -> dict[str, object]:
    """Every version decided, and the champion (an alias names one version) scores best."""
    versions = client.search_model_versions(f"name = '{name}'")
    decided = [v for v in versions if v.tags.get("gate.decision") in ("promoted", "rejected")]
    if not versions:  # every job failed: reported as such, not as a traceback here
        return {"versions": 0, "decided": 0, "champion": None, "best": None,
                "champion_is_best": False}
    champion = client.get_model_version_by_alias(name, "champion")
    scores = {v.version: float(v.tags["gate.challenger_score"]) for v in versions}
    best = min(scores, key=lambda v: scores[v])
    return {"versions": len(versions), "decided": len(decided),
            "champion": champion.version,
            "best": best, "champion_is_best": scores[champion.version] == scores[best]}


@contextlib.contextmanager
def tracking_server(args: argparse.Namespace, root: Path) -> Iterator[tuple[str, dict[str, int]]]:
    """The server's URI and the processes whose memory to sample: the one given by
    --tracking-uri and --watch, or a PostgreSQL (or SQLite) and `mlflow server` started here."""
    if args.tracking_uri:
        yield args.tracking_uri, dict(args.watch)
        return
    pg = Postgres() if args.backend == "postgresql" else None
    try:
        backend = pg.uri if pg else f"sqlite:///{root / 'server.db'}"
        server = MlflowServer(backend, str(root / "artifacts"), root / "server",
                              workers=args.workers)
        try:
            yield server.uri, {"server": server.proc.pid} | ({"postgres": pg.pid()} if pg
                                                             else {})
        finally:
            server.stop()
    finally:
        if pg is not None:
            pg.remove()


def watched(text: str) -> tuple[str, int]:
    """argparse type of --watch: NAME=PID."""
    name, _, pid = text.partition("=")
    if not name or not pid.isdigit():
        raise argparse.ArgumentTypeError(f"{text!r} is not NAME=PID")
    return name, int(pid)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--same", type=int, default=8, help="jobs for one registered model")
    ap.add_argument("--models", type=int, default=16, help="jobs for as many models")
    ap.add_argument("--backend", choices=["postgresql", "sqlite"], default="postgresql")
    ap.add_argument("--workers", type=int, default=4, help="mlflow server workers")
    ap.add_argument("--tracking-uri", help="a server already running, instead of starting one")
    ap.add_argument("--watch", type=watched, action="append", default=[], metavar="NAME=PID",
                    help="with --tracking-uri: a process (tree) whose peak memory to report")
    record.add_argument(ap, "tracking_server")
    args = ap.parse_args()
    run = record.start("tracking_server")

    with tempfile.TemporaryDirectory(prefix="forecast-bench-") as tmp:
        root = Path(tmp)
        with tracking_server(args, root) as (uri, pids):
            sampler = PeakRss(pids)
            sampler.start()
            try:
                csv = series_csv(root / "series.csv", n=800)
                client = MlflowClient(tracking_uri=uri, registry_uri=uri)
                same_s, same_codes = run_jobs(write_configs(root, csv, args.same, True), uri)
                gate = check_gate(client, "shared-model")
                many_s, many_codes = run_jobs(write_configs(root, csv, args.models, False), uri)
                registered = sum(bool(client.search_model_versions(f"name = 'model-{i}'"))
                                 for i in range(args.models))
            finally:
                sampler.done.set()
                sampler.join()

    result = {
        "backend": "given" if args.tracking_uri else args.backend,
        "server_workers": None if args.tracking_uri else args.workers,
        "same_model_jobs": args.same, "same_model_wall_s": round(same_s, 1),
        "same_model_exit_codes": same_codes, "gate": gate,
        "many_model_jobs": args.models, "many_model_wall_s": round(many_s, 1),
        "many_model_exit_codes": many_codes, "many_models_registered": registered,
        "peak_rss_mb": {k: round(v / 2**20) for k, v in sampler.peak.items()},
    }
    print(f"{'phase':<28}{'jobs':>6}{'wall s':>9}{'all exit 0':>12}")
    print(f"{'same registered model':<28}{args.same:>6}{same_s:>9.1f}"
          f"{str(not any(same_codes)):>12}")
    print(f"{'different models':<28}{args.models:>6}{many_s:>9.1f}"
          f"{str(not any(many_codes)):>12}")
    print(f"gate: {gate['decided']}/{gate['versions']} versions decided, champion "
          f"v{gate['champion']}, best v{gate['best']}")
    print("peak RSS MB: " + ", ".join(f"{k} {v}" for k, v in result["peak_rss_mb"].items()))
    record.finish(run, result, args.results)
    ok = not any(same_codes + many_codes) and gate["champion_is_best"] \
        and gate["decided"] == args.same and registered == args.models
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
