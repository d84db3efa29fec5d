"""The scheduling recipes in pipelines/schedules/: every command they run must parse with the
CLI's own parser and name config files that exist, and the scheduler settings the README
promises (no overlap, no retries, exit codes 6 and 7 skipped) must be there."""

from __future__ import annotations

import argparse
import ast
import importlib.util
import re
import shlex
from pathlib import Path
from typing import Any

import pytest
import yaml

from forecast.cli import build_parser
from forecast.config import load_config
from forecast.errors import LockHeld, StaleData

ROOT = Path(__file__).resolve().parents[1]
SCHEDULES = ROOT / "pipelines" / "schedules"

# cron fields in order: name, lowest, highest (day of week 0-7: both 0 and 7 are Sunday)
CRON_FIELDS = [("minute", 0, 59), ("hour", 0, 23), ("day of month", 1, 31), ("month", 1, 12),
               ("day of week", 0, 7)]
_CRON_ITEM = re.compile(r"^(?:\*|(\d+)(?:-(\d+))?)(?:/(\d+))?$")
_ENV_LINE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*\s*=")
# where the `forecast` arguments end in a shell command line: a redirection or an operator
_SHELL_END = re.compile(r"^(?:\d*>.*|<.*|&&|\|\||\||;)$")


def valid_cron_field(text: str, lo: int, hi: int) -> bool:
    """One schedule field: `*`, `*/n`, `a`, `a-b`, `a-b/n`, or a comma list of those."""
    for item in text.split(","):
        m = _CRON_ITEM.match(item)
        if m is None:
            return False
        start, end, step = m.groups()
        if step is not None and int(step) == 0:
            return False
        if start is not None:
            first = int(start)
            last = int(end) if end is not None else first
            if not lo <= first <= last <= hi:
                return False
    return True


def strict(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The parser and its subcommands without prefix matching: argparse takes `--conf` for
    `--config`, and a recipe relying on that would break once another flag shares the
    prefix."""
    parser.allow_abbrev = False
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                strict(sub)
    return parser


def parse_cli(argv: list[str], where: str) -> Any:
    """The argv as the CLI would parse it; a usage error fails the test naming the recipe."""
    try:
        return strict(build_parser()).parse_args(argv)
    except SystemExit:
        pytest.fail(f"{where}: `forecast {shlex.join(argv)}` is rejected by the CLI's parser")


def forecast_argv(command: str) -> tuple[str, list[str]]:
    """(the forecast executable, its arguments) from a shell command line."""
    tokens = shlex.split(command)
    for i, token in enumerate(tokens):
        # in command position: first, or after an operator (not `cd /opt/forecast`)
        at_command = i == 0 or tokens[i - 1] in ("&&", "||", "|", ";")
        if at_command and Path(token).name == "forecast":
            rest = tokens[i + 1:]
            end = next((j for j, t in enumerate(rest) if _SHELL_END.match(t)), len(rest))
            return token, rest[:end]
    raise AssertionError(f"no `forecast` executable in {command!r}")


def check_train_args(args: Any, where: str) -> None:
    assert args.command == "pipeline", where
    assert args.config is not None, f"{where}: the training command names no --config"
    config = ROOT / args.config
    assert config.is_file(), f"{where}: config {args.config} does not exist in the repository"
    assert args.log_format == "json", f"{where}: scheduled runs should log JSON"


def check_batch_args(args: Any, train_config: str, where: str) -> None:
    # The batch forecast must use the champion of the model the training job registers.
    registered = load_config(ROOT / train_config).registered_model
    assert args.model == f"models:/{registered}@champion", where
    assert args.log_format == "json", f"{where}: scheduled runs should log JSON"


# ---------------------------------------------------------------- crontab


def test_cron_field_validator() -> None:
    assert valid_cron_field("*", 0, 59)
    assert valid_cron_field("*/15", 0, 59)
    assert valid_cron_field("0,15,30,45", 0, 59)
    assert valid_cron_field("1-5", 0, 7)
    assert valid_cron_field("9-17/2", 0, 23)
    assert not valid_cron_field("60", 0, 59)
    assert not valid_cron_field("0", 1, 31)
    assert not valid_cron_field("*/0", 0, 59)
    assert not valid_cron_field("5-3", 0, 23)
    assert not valid_cron_field("1,,2", 0, 59)
    assert not valid_cron_field("mon", 0, 7)


def crontab_jobs() -> list[tuple[list[str], str]]:
    jobs = []
    for line in (SCHEDULES / "crontab").read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#") or _ENV_LINE.match(line):
            continue
        parts = line.split(None, 5)
        assert len(parts) == 6, f"crontab line without 5 schedule fields and a command: {line}"
        jobs.append((parts[:5], parts[5]))
    return jobs


def test_crontab_sets_the_tracking_uri_and_shell() -> None:
    env = dict(line.split("=", 1) for line in (SCHEDULES / "crontab").read_text().splitlines()
               if _ENV_LINE.match(line))
    assert env["MLFLOW_TRACKING_URI"].startswith(("http://", "https://"))
    assert env["SHELL"] == "/bin/sh"


def test_crontab_schedules_are_valid() -> None:
    jobs = crontab_jobs()
    assert len(jobs) == 2
    for fields, command in jobs:
        for value, (name, lo, hi) in zip(fields, CRON_FIELDS, strict=True):
            assert valid_cron_field(value, lo, hi), f"{name} field {value!r} of {command!r}"
    (train_fields, _), (batch_fields, _) = jobs
    assert train_fields[0].isdigit() and train_fields[1:] == ["*"] * 4  # hourly
    assert batch_fields[0].isdigit() and batch_fields[1].isdigit()  # daily
    assert batch_fields[2:] == ["*"] * 3


def test_crontab_commands_parse_with_the_cli() -> None:
    (_, train), (_, batch) = crontab_jobs()
    for command in (train, batch):
        tokens = shlex.split(command)
        assert tokens[0] == "cd" and tokens[2] == "&&", "each job starts in the project folder"
        exe, _ = forecast_argv(command)
        assert exe == ".venv/bin/forecast", "the project's venv, not whatever PATH holds"
        assert ">>" in tokens and tokens[-1] == "2>&1", "output appended to a log file"
    exe, argv = forecast_argv(train)
    args = parse_cli(argv, "crontab")
    assert argv[:2] == ["pipeline", "train"]
    check_train_args(args, "crontab")
    _, argv = forecast_argv(batch)
    assert argv[:2] == ["pipeline", "batch-forecast"]
    check_batch_args(parse_cli(argv, "crontab"), args.config, "crontab")


# ---------------------------------------------------------------- Kubernetes


def manifests() -> list[dict[str, Any]]:
    docs = yaml.safe_load_all((SCHEDULES / "cronjob.yaml").read_text())
    return [d for d in docs if d is not None]


def cronjobs() -> dict[str, dict[str, Any]]:
    """CronJob documents by their container's name."""
    out = {}
    for doc in manifests():
        if doc["kind"] == "CronJob":
            (container,) = doc["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"]
            out[container["name"]] = doc
    return out


def test_k8s_cronjobs_never_overlap_or_retry() -> None:
    jobs = cronjobs()
    assert set(jobs) == {"train", "batch-forecast"}
    for name, doc in jobs.items():
        assert doc["apiVersion"] == "batch/v1", name
        spec = doc["spec"]
        assert spec["concurrencyPolicy"] == "Forbid", name
        assert isinstance(spec["startingDeadlineSeconds"], int), name
        assert spec["startingDeadlineSeconds"] > 0, name
        schedule = spec["schedule"].split()
        for value, (field, lo, hi) in zip(schedule, CRON_FIELDS, strict=True):
            assert valid_cron_field(value, lo, hi), f"{name}: {field} {value!r}"
        job = spec["jobTemplate"]["spec"]
        assert job["backoffLimit"] == 0, name
        assert job["template"]["spec"]["restartPolicy"] == "Never", name
        # only a disrupted pod (eviction, drain) may be replaced, and it resumes
        (rule,) = job["podFailurePolicy"]["rules"]
        assert rule["action"] == "Ignore"
        assert rule["onPodConditions"] == [{"type": "DisruptionTarget"}]


def test_k8s_containers_have_limits_secret_uri_and_persistent_outputs() -> None:
    claims = {d["metadata"]["name"] for d in manifests() if d["kind"] == "PersistentVolumeClaim"}
    parsed = {}
    for name, doc in cronjobs().items():
        pod = doc["spec"]["jobTemplate"]["spec"]["template"]["spec"]
        (container,) = pod["containers"]
        resources = container["resources"]
        for kind in ("requests", "limits"):
            assert {"cpu", "memory"} <= set(resources[kind]), f"{name}: {kind}"
        (env,) = [e for e in container["env"] if e["name"] == "MLFLOW_TRACKING_URI"]
        assert "value" not in env, f"{name}: the tracking URI must come from a Secret"
        assert set(env["valueFrom"]["secretKeyRef"]) == {"name", "key"}
        assert container["command"] == ["forecast"]
        parsed[name] = args = parse_cli(container["args"], f"cronjob.yaml {name}")
        if name == "train":
            # checkpoints live under --output-dir: it must be the persistent, writable claim
            volumes = {v["name"]: v for v in pod["volumes"]}
            mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
            mount = mounts[args.output_dir]
            assert not mount.get("readOnly")
            claim = volumes[mount["name"]]["persistentVolumeClaim"]
            assert claim["claimName"] in claims and not claim.get("readOnly")
            threads = [s for s in args.set if s.startswith("train.num_threads=")]
            assert threads == [f"train.num_threads={resources['limits']['cpu']}"]
    check_train_args(parsed["train"], "cronjob.yaml train")
    check_batch_args(parsed["batch-forecast"], parsed["train"].config,
                     "cronjob.yaml batch-forecast")


# ---------------------------------------------------------------- Airflow


def literal(node: ast.expr, names: dict[str, Any]) -> Any:
    """Evaluate a constant expression of the DAG file: literals, names bound to them,
    f-strings over those, and `os.environ.get(KEY, DEFAULT)` (as its default)."""
    if isinstance(node, ast.Constant):
        return node.value
    if isinstance(node, ast.List | ast.Tuple):
        return [literal(e, names) for e in node.elts]
    if isinstance(node, ast.Name):
        return names[node.id]
    if isinstance(node, ast.JoinedStr):
        return "".join(str(literal(v.value if isinstance(v, ast.FormattedValue) else v, names))
                       for v in node.values)
    if isinstance(node, ast.Call) and ast.unparse(node.func) == "os.environ.get":
        return literal(node.args[1], names)
    raise ValueError(f"not a constant: {ast.unparse(node)}")


def dag_module_literals() -> tuple[ast.Module, dict[str, Any]]:
    """The DAG file's syntax tree and the values of its module-level constants."""
    tree = ast.parse((SCHEDULES / "airflow_dag.py").read_text())
    names: dict[str, Any] = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 \
                and isinstance(node.targets[0], ast.Name):
            try:
                names[node.targets[0].id] = literal(node.value, names)
            except (ValueError, KeyError):
                continue
    return tree, names


def bash_operators(tree: ast.Module) -> dict[str, dict[str, ast.expr]]:
    """task_id → keyword arguments of every BashOperator(...) call."""
    out = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "BashOperator":
            kwargs = {k.arg: k.value for k in node.keywords if k.arg}
            out[ast.literal_eval(kwargs["task_id"])] = kwargs
    return out


def test_airflow_dag_commands_and_skip_codes_without_airflow() -> None:
    tree, literals = dag_module_literals()
    operators = bash_operators(tree)
    assert set(operators) == {"train", "batch_forecast"}
    argvs = {}
    for task_id, kwargs in operators.items():
        call = kwargs["bash_command"]
        assert isinstance(call, ast.Call) and call.func.id == "command"  # type: ignore[attr-defined]
        argvs[task_id] = literal(call.args[0], literals)
    args = parse_cli(argvs["train"], "airflow_dag.py train")
    check_train_args(args, "airflow_dag.py train")
    check_batch_args(parse_cli(argvs["batch_forecast"], "airflow_dag.py batch_forecast"),
                     args.config, "airflow_dag.py batch_forecast")
    skip = literal(operators["train"]["skip_on_exit_code"], literals)
    assert sorted(skip) == sorted([LockHeld.exit_code, StaleData.exit_code]) == [6, 7]
    assert "skip_on_exit_code" not in operators["batch_forecast"]


def test_airflow_dag_loads_in_airflow() -> None:
    pytest.importorskip("airflow")
    spec = importlib.util.spec_from_file_location("forecast_airflow_dag",
                                                  SCHEDULES / "airflow_dag.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    dag = module.dag
    assert dag.dag_id == "forecast_etth1"
    assert dag.max_active_runs == 1
    assert dag.catchup is False
    assert set(dag.task_ids) == {"train", "batch_forecast"}
    train, batch = dag.get_task("train"), dag.get_task("batch_forecast")
    assert train.downstream_task_ids == {"batch_forecast"}
    assert batch.upstream_task_ids == {"train"}
    assert sorted(train.skip_on_exit_code) == [LockHeld.exit_code, StaleData.exit_code]
    assert train.retries == 0 and batch.retries == 0
    project = module.PROJECT_DIR
    for task, argv in ((train, module.TRAIN_ARGV), (batch, module.BATCH_FORECAST_ARGV)):
        assert shlex.split(task.bash_command) == [f"{project}/.venv/bin/forecast", *argv]
        assert task.env["MLFLOW_TRACKING_URI"].startswith("{{ var.value.")
