"""The `forecast` command line. Errors print as one line with a non-zero exit code;
`--debug` shows the traceback."""

from __future__ import annotations

import argparse
import json
import logging
import os
import shlex
import shutil
import signal
import socket
import sys
import threading
from collections.abc import Callable
from dataclasses import asdict
from functools import partial
from importlib import resources
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import mlflow
import pandas as pd
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
from pydantic import ValidationError

from forecast.bundle import load_bundle
from forecast.compare import compare_runs
from forecast.config import Config, dump_config, load_config
from forecast.data import SeriesSet, check_model_data, read_table
from forecast.distributed import Leader, process_group
from forecast.errors import (
    ConfigError,
    DataError,
    ForecastError,
    TrackingError,
    TrainingError,
)
from forecast.evaluate import evaluate
from forecast.intervals import parse_levels
from forecast.logs import failure_line, json_requested, setup_logging
from forecast.model import describe
from forecast.outputs import saved_config
from forecast.paths import writable_file
from forecast.predictor import Forecaster
from forecast.registry import below_baselines, list_versions, promote, version_number
from forecast.runner import TrainOutcome, follow, load_data, train_and_evaluate
from forecast.scaling import Scaler
from forecast.tracking import (
    PREFLIGHT_SECONDS,
    TrackedOutcome,
    default_uri,
    end_open_runs,
    preflight,
    resolve_uri,
    train_tracked,
)
from forecast.train import resolve_device
from forecast.windows import prepare
from pipelines import train as train_pipeline
from pipelines.backtest import BacktestOptions, run_backtest
from pipelines.batch_forecast import BatchOptions, batch_forecast, peak_rss_mb

log = logging.getLogger("forecast")


def demo_config_path() -> Path:
    return Path(str(resources.files("pipelines") / "configs" / "demo.yaml"))


def _resolve(args: argparse.Namespace) -> Config:
    overrides = list(args.set or [])
    if getattr(args, "data", None):
        overrides.append(f"data.path={args.data}")
    if getattr(args, "output_dir", None):
        overrides.append(f"output_dir={args.output_dir}")
    return load_config(args.config, overrides)


def _report(outcome: TrainOutcome) -> None:
    fit = outcome.fit
    print(describe(outcome.model))
    stop = "early stop" if fit.stopped_early else "all epochs"
    print(f"trained {len(fit.history)} epochs ({stop}; best epoch {fit.best_epoch}, "
          f"val loss {fit.best_val_loss:.4f}) in {fit.seconds:.1f}s, "
          f"{fit.windows_per_second:,.0f} windows/s")
    if outcome.linear_only:
        print("note: validation kept the least-squares linear forecast alone (best epoch 0): "
              "on this data the Transformer adds nothing to it; its head is zero")
    print()
    print(outcome.evaluation.table())
    below = below_baselines(outcome.validation, outcome.config.tracking.metric)
    if below:
        print(f"warning: {below}")
    print()
    for note in outcome.series.notes:
        print(f"note: {note}")
    print(f"model:   {outcome.model_dir}")
    print(f"metrics: {outcome.output_dir / 'metrics.json'}")


T = TypeVar("T")


def _ranked(cfg: Config, lead: Callable[[Leader], T]) -> T | None:
    """Run `lead` on rank 0 (the only process without a launcher); any other rank of a
    torchrun (or other launcher's) job trains in step with it and returns None."""
    with process_group(resolve_device(cfg.train)) as dist:
        if not dist.is_main:
            logging.getLogger("forecast").setLevel(logging.WARNING)  # rank 0 alone logs
            follow(cfg, dist)
            return None
        with Leader(dist) as leader:
            return lead(leader)


def _start_ranks(leader: Leader) -> Callable[[SeriesSet], None]:
    """The last check before training: tell the other ranks to start, with the run's id."""
    def check(series: SeriesSet) -> None:
        run = mlflow.active_run()
        leader.go(series.digest, run.info.run_id if run else None)
    return check


def _train(args: argparse.Namespace) -> TrackedOutcome | None:
    cfg = _resolve(args)
    return _ranked(cfg, partial(_train_main, args, cfg))


def _train_main(args: argparse.Namespace, cfg: Config, leader: Leader) -> TrackedOutcome | None:
    if not cfg.tracking.enabled:
        series = load_data(cfg)
        _start_ranks(leader)(series)
        _report(train_and_evaluate(cfg, series))
        return None
    uri = resolve_uri(cfg.tracking, args.tracking_uri)
    tracked = train_tracked(cfg, uri, check=_start_ranks(leader))
    _report(tracked.outcome)
    print(f"mlflow:  run {tracked.run_id} in experiment {cfg.tracking.experiment!r} at {uri}")
    if tracked.version is not None and tracked.decision is not None:
        d = tracked.decision
        verdict = "promoted to champion" if d.promoted else "stays challenger"
        print(f"registry: {cfg.registered_model} v{tracked.version.version} {verdict}: {d.reason}")
    return tracked


def cmd_train(args: argparse.Namespace) -> int:
    _train(args)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    args.config = demo_config_path()
    print("forecast demo: synthetic hourly series, 5 correlated channels, one year "
          "(see pipelines/configs/demo.yaml)")
    tracked = _train(args)
    if tracked is not None and tracked.version is not None:
        name = tracked.version.name
        print("\nserve the champion:")
        print(f"  forecast serve --model models:/{name}@champion   (then open "
              "http://127.0.0.1:8000/docs)")
        print(f"  mlflow models serve -m models:/{name}@champion --env-manager local -p 5001 "
              f"(with MLFLOW_TRACKING_URI={tracked.tracking_uri})")
        print(f"compare runs:  forecast runs compare --experiment "
              f"{tracked.outcome.config.tracking.experiment}")
        uri = tracked.tracking_uri
        # a tracking server is its own UI; `mlflow ui` takes a database, not a server's URL
        print(f"MLflow UI:     open {uri} in a browser" if uri.startswith(("http://", "https://"))
              else f"MLflow UI:     mlflow ui --backend-store-uri {uri}")
    return 0


def _client(args: argparse.Namespace) -> tuple[str, MlflowClient]:
    uri = default_uri(args.tracking_uri)
    preflight(uri, PREFLIGHT_SECONDS, create=False)  # an empty new store would mislead
    return uri, MlflowClient(tracking_uri=uri, registry_uri=uri)


def cmd_models_list(args: argparse.Namespace) -> int:
    uri, client = _client(args)
    rows = list_versions(client, args.name, uri)
    print(pd.DataFrame(rows).to_string(index=False))
    return 0


def cmd_models_promote(args: argparse.Namespace) -> int:
    _, client = _client(args)
    version = version_number(args.version, args.name)
    previous = promote(client, args.name, version)
    if previous == version:
        print(f"{args.name} v{version} is already champion; nothing changed")
        return 0
    was = f" (was v{previous})" if previous else ""
    print(f"{args.name} v{version} is now champion{was}; recorded as a manual promotion")
    return 0


def cmd_runs_compare(args: argparse.Namespace) -> int:
    uri, _ = _client(args)
    table = compare_runs(uri, args.experiment, args.last)
    if table.empty:
        print(f"experiment {args.experiment!r} has no runs")
        return 0
    with pd.option_context("display.width", 250, "display.max_columns", 50):
        print(table.to_string(index=False))
    print("champion: * marks the run whose model holds the champion alias")
    return 0


def cmd_config(args: argparse.Namespace) -> int:
    cfg = _resolve(args)
    from forecast.tune import check_space  # optuna is only needed here

    check_space(cfg)  # as `forecast tune` would, so that a config that prints also sweeps
    print(dump_config(cfg), end="")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    model_dir = Path(args.model)
    bundle = load_bundle(model_dir)
    args.config = saved_config(model_dir, args.config)
    cfg = _resolve(args)
    meta = bundle.meta
    # the weights fix the windows and the architecture: a model cannot be scored at others
    fixed = {"windows.lookback": meta.lookback, "windows.horizon": meta.horizon,
             **{f"model.{k}": v for k, v in meta.model.items()}}
    given = cfg.flat()
    for key, value in fixed.items():
        if given.get(key, value) != value:
            raise ConfigError(f"{key} is {given[key]} but the model was trained with {value}; "
                              f"leave it out of --set and use the model's own config (the "
                              "default) or one with the same setting")
    series = load_data(cfg)
    check_model_data(series, meta.channels, meta.freq, "evaluate")
    scaler = Scaler(bundle.mean, bundle.scale)
    try:
        prepared = prepare(series, cfg.split, cfg.windows, scaler)
    except ConfigError as err:  # its fix (shorten the lookback) is no fix for a saved model
        raise DataError(f"{str(err).split('; ')[0]}: too few rows to score this model; give a "
                        "longer data file (a saved model's lookback and horizon are fixed)"
                        ) from None
    # --set eval.season scores seasonal naive and MASE at another season; else training's
    result = evaluate(bundle.model, prepared, cfg.eval, cfg.eval.season or bundle.meta.season,
                      args.block)
    print(result.table())
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    forecaster = Forecaster(load_bundle(args.model))
    if args.horizon is not None and args.horizon > forecaster.horizon:
        raise ConfigError(f"--horizon {args.horizon} is beyond the {forecaster.horizon} steps "
                          f"the model forecasts; give --horizon {forecaster.horizon} or less")
    quantiles, levels = _bands(args)
    forecaster.check_bands(quantiles, levels)  # before the history is read
    history = read_table(args.history, "--history")
    forecast = forecaster.predict_frame(history, args.horizon, quantiles, levels)
    out = Path(args.out)
    suffix = out.suffix.lower()
    if suffix not in (".parquet", ".pq", ".csv"):  # before any folder is made for it
        raise ForecastError(f"--out {str(out)!r}: use a .csv or .parquet file name")
    writable_file(out, "--out")
    if suffix == ".csv":
        forecast.to_csv(out, index=False)
    else:
        forecast.to_parquet(out, index=False)
    n = forecast["series_id"].nunique()
    print(f"wrote {len(forecast)} rows ({n} series x {len(forecast) // max(n, 1)} steps) to {out}")
    return 0


def _time_flag(text: str, flag: str) -> pd.Timestamp:
    try:
        stamp = pd.Timestamp(text)
        if pd.isna(stamp):  # '' and 'NaT' parse as NaT, which every comparison passes
            raise ValueError
    except ValueError:
        raise ConfigError(f"{flag} {text!r} is not a time; use ISO 8601, e.g. "
                          "2026-11-21T06:00:00Z") from None
    return stamp


def _as_of(text: str | None) -> pd.Timestamp | None:
    if text is None:
        return None
    stamp = _time_flag(text, "--as-of")
    return stamp.tz_localize("UTC") if stamp.tzinfo is None else stamp


def cmd_backtest(args: argparse.Namespace) -> int:
    # the data's timestamps are held naive (aware ones in UTC): --until likewise
    until = None if args.until is None else _time_flag(args.until, "--until")
    if until is not None and until.tzinfo is not None:
        until = until.tz_convert("UTC").tz_localize(None)
    options = BacktestOptions(
        model=args.model, cutoffs=args.cutoffs, out=Path(args.out), step=args.step, until=until,
        config=args.config, data=args.data, overrides=tuple(args.set or []), refit=args.refit,
        tracking_uri=default_uri(args.tracking_uri), experiment=args.experiment)
    outcome = run_backtest(options)
    if args.log_format != "json":
        print(outcome.result.table())
        print(f"wrote {outcome.csv} (per cutoff) and {outcome.step_csv} (per horizon step); "
              f"MLflow run {outcome.run_id}, {outcome.seconds:.1f}s, peak RSS "
              f"{peak_rss_mb():.0f} MB")
    return 0


def cmd_pipeline_train(args: argparse.Namespace) -> int:
    cfg = _resolve(args)
    if not cfg.tracking.enabled:
        raise ConfigError("tracking.enabled is false: the training pipeline records every run "
                          "and registers its model in MLflow; use `forecast train` instead")
    uri = resolve_uri(cfg.tracking, args.tracking_uri)
    as_of = _as_of(args.as_of)
    result = _ranked(cfg, lambda leader: train_pipeline.run_job(
        cfg, uri, force=args.force, as_of=as_of, ready=_start_ranks(leader)))
    if result is not None and result.tracked is not None and args.log_format != "json":
        _report(result.tracked.outcome)
    return 0


def cmd_tune(args: argparse.Namespace) -> int:
    from forecast.tune import tune  # optuna is only needed here

    cfg = _resolve(args)
    if not cfg.tracking.enabled:  # it was ignored, and the sweep logged to ./mlflow.db anyway
        raise ConfigError("tracking.enabled is false: a sweep records its trials as MLflow runs "
                          "(that is how they are compared); set it to true or leave it out")
    uri = resolve_uri(cfg.tracking, args.tracking_uri)
    if args.write_config is not None:  # before the search, not after its minutes
        writable_file(args.write_config, "--write-config")
    result = tune(cfg, uri, args.trials, args.budget)
    if result.space_reason:
        print(f"space chosen from the data: {result.space_reason}")
    print(result.table())
    best = result.best
    if best is None:
        raise TrainingError(f"no trial completed in {result.seconds:.0f}s (each trial's state "
                            f"is above, its error in its run's error tag); parent run "
                            f"{result.parent_run_id} is marked FAILED")
    print(f"best: trial {best.number}, val {cfg.tune.metric} {best.score:.4f} "
          f"({json.dumps(best.values)}) in {result.seconds:.0f}s")
    print(f"mlflow: parent run {result.parent_run_id} in experiment "
          f"{cfg.tracking.experiment!r} at {uri} (children: the trials)")
    if args.write_config is not None and result.config is not None:
        args.write_config.write_text(dump_config(result.config))
        print(f"tuned config: {args.write_config}; train and score it on test once with\n"
              f"  forecast train --config {shlex.quote(str(args.write_config))}")
    return 0


def _bands(args: argparse.Namespace) -> tuple[list[float], list[float]]:
    """--quantiles and --levels as shares; given empty, a flag is refused as not a number
    rather than read as "none"."""
    quantiles = parse_levels(args.quantiles, "--quantiles", percent=False) \
        if args.quantiles is not None else []
    levels = parse_levels(args.levels, "--levels", percent=True) \
        if args.levels is not None else []
    return quantiles, levels


def cmd_batch_forecast(args: argparse.Namespace) -> int:
    quantiles, levels = _bands(args)
    options = BatchOptions(
        model=args.model, input=args.input, output=args.output, layout=args.layout,
        chunk_size=args.chunk_size, horizon=args.horizon, tracking_uri=args.tracking_uri,
        timestamp_column=args.timestamp_column, id_column=args.id_column,
        on_bad_series=args.on_bad_series, read_rows=args.read_rows, engine=args.engine,
        spark_master=args.spark_master, spark_conf=tuple(args.spark_conf),
        quantiles=tuple(quantiles), levels=tuple(levels))
    if args.engine == "spark":  # PySpark is an optional extra: imported only when asked for
        from pipelines.batch_spark import spark_batch_forecast
        s = spark_batch_forecast(options)
    else:
        s = batch_forecast(options)
    skipped = f"{s.series_skipped:,} skipped (see {s.errors_file})" if s.series_skipped \
        else "none skipped"
    if args.log_format != "json":  # JSON: every line is one object
        print(f"forecast {s.series_forecast:,} series with {s.model_name} (version "
              f"{s.model_version}), "
              f"{skipped}: {s.rows:,} rows in {s.output}, {s.seconds:.1f}s "
              f"({s.series_per_second:,.0f} series/s, peak RSS {s.peak_rss_mb:.0f} MB)")
    print(json.dumps(asdict(s)))
    return 0


def _check_port(host: str, port: int) -> None:
    """uvicorn reports a port in use on its own log and exits 3, the code for bad data."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port,
                                                             type=socket.SOCK_STREAM)[0]
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
            probe.bind(address)
    except OSError as err:
        raise ConfigError(f"cannot listen on {host}:{port} ({err.strerror or err}); pick another "
                          "--port or --host, or stop what holds it") from None


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from serving.settings import DEFAULT_MODEL_URI

    # Settings travel as FORECAST_* variables so that every uvicorn worker builds the same app.
    env = {"FORECAST_MODEL_URI": args.model or os.environ.get("FORECAST_MODEL_URI")
           or DEFAULT_MODEL_URI}
    if args.tracking_uri:
        env["FORECAST_TRACKING_URI"] = args.tracking_uri
    if args.reload_interval:
        env["FORECAST_RELOAD_INTERVAL_S"] = str(args.reload_interval)
    os.environ.update(env)
    from serving.metrics import MULTIPROC_DIR, prepare_multiprocess_dir
    from serving.settings import Settings

    try:
        settings = Settings()
    except ValidationError as err:  # one line, naming each variable, like every other error
        problems = "; ".join(f"FORECAST_{'_'.join(map(str, e['loc'])).upper()}: "
                             f"{e['msg'].removeprefix('Value error, ')}" for e in err.errors())
        raise ConfigError(f"invalid service settings: {problems}") from None
    if settings.model_uri.startswith("models:/"):  # an unreachable server retries for minutes
        preflight(default_uri(settings.tracking_uri), PREFLIGHT_SECONDS, create=False)
    _check_port(args.host, args.port)
    scratch = None  # a metrics folder made here, removed when the service stops
    if args.workers > 1 or MULTIPROC_DIR in os.environ:  # before a worker imports prometheus
        given = MULTIPROC_DIR in os.environ
        folder = prepare_multiprocess_dir()
        scratch = None if given else folder
        log.info("metrics of %d worker(s) summed through %s", args.workers, folder)
    print(f"serving {env['FORECAST_MODEL_URI']} on http://{args.host}:{args.port} "
          f"(docs at /docs)", flush=True)
    try:
        uvicorn.run("serving.app:create_app", factory=True, host=args.host, port=args.port,
                    workers=args.workers, log_level="warning" if args.quiet else "info",
                    access_log=False)
    finally:
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)
    return 0


def positive_int(text: str) -> int:
    """argparse type: a whole number of at least 1, with a message naming what was given."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is below 1")
    return value


def tcp_port(text: str) -> int:
    """argparse type: a TCP port, 1 to 65535."""
    value = positive_int(text)
    if value > 65535:
        raise argparse.ArgumentTypeError(f"{value} is above 65535, the highest TCP port")
    return value


def not_blank(what: str) -> Callable[[str], str]:
    """argparse type: a value that may not be empty, since an empty flag would silently mean
    its default (./mlflow.db, output_dir, the model's column); surrounding blanks dropped."""
    def check(text: str) -> str:
        if not text.strip():
            raise argparse.ArgumentTypeError(f"is empty: give {what} or leave the flag out")
        return text.strip()
    return check


tracking_uri = not_blank("a URI (e.g. sqlite:///mlflow.db or http://host:5000)")
folder = not_blank("a folder")
column = not_blank("a column name")


def duration_minutes(text: str) -> float:
    """argparse type: a duration such as 30m, 90s, 1.5h or 30 (minutes), in minutes."""
    units = {"s": 1 / 60, "m": 1.0, "h": 60.0}
    number, unit = (text[:-1], text[-1]) if text[-1:].lower() in units else (text, "m")
    try:
        value = float(number) * units[unit.lower()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration; give e.g. 30m, 90s, "
                                         "1.5h or 30 (minutes)") from None
    if not value > 0 or value == float("inf"):  # also rejects nan
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration above 0")
    return value


def positive_float(text: str) -> float:
    """argparse type: a number above 0, with a message naming what was given."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value > 0:  # also rejects nan
        raise argparse.ArgumentTypeError(f"{value} is not above 0")
    return value


def band_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--quantiles", metavar="Q,...", help="quantile levels in (0, 1), e.g. "
                   "0.1,0.5,0.9: a column <channel>-q-<percent> each")
    p.add_argument("--levels", metavar="PCT,...", help="central interval levels in percent, "
                   "e.g. 80,95: columns <channel>-lo-<level> and <channel>-hi-<level> each")


def batch_forecast_flags(p: argparse.ArgumentParser) -> None:
    """The flags of `forecast pipeline batch-forecast`; they map one to one to BatchOptions."""
    p.add_argument("--model", required=True, help="models:/NAME@ALIAS, models:/NAME/VERSION "
                   "or a model directory written by `forecast train`")
    p.add_argument("--input", required=True, help="series file, .csv or .parquet (--engine "
                   "spark: Parquet, any path or URI Spark reads)")
    p.add_argument("--output", required=True, help="forecast file, .parquet or .csv (--engine "
                   "spark: a Parquet folder); bad series are listed in <stem>.errors.csv "
                   "beside it")
    p.add_argument("--layout", choices=["long", "wide"], default="long",
                   help="long: id, timestamp, channel columns, a series' rows together; wide: "
                   "timestamp plus one column per series (single-channel models)")
    p.add_argument("--chunk-size", type=positive_int, default=2000,
                   help="series per forward pass (default 2000)")
    p.add_argument("--read-rows", type=positive_int, default=200_000,
                   help="rows per read chunk (default 200000); bounds memory only")
    p.add_argument("--horizon", type=positive_int, help="steps to forecast (default: the "
                   "model's)")
    p.add_argument("--tracking-uri", type=tracking_uri, help="MLflow tracking URI for models:/ "
                   "(default $MLFLOW_TRACKING_URI, then sqlite:///mlflow.db)")
    p.add_argument("--timestamp-column", type=column,
                   help="default: the model's timestamp column")
    p.add_argument("--id-column", type=column, default="series_id",
                   help="series id column (long layout)")
    p.add_argument("--on-bad-series", choices=["skip", "fail"], default="skip",
                   help="skip (default): forecast the others and list the bad ones; fail: stop")
    band_flags(p)
    p.add_argument("--engine", choices=["local", "spark"], default="local",
                   help="local (default): this process, streaming the file; spark: "
                   "groupBy().applyInPandas on a Spark session (Parquet in, a Parquet folder "
                   "out; needs forecast[spark])")
    p.add_argument("--spark-master", help="--engine spark: the master URL (e.g. local[4], "
                   "yarn, spark://host:7077); default: the session's, local[*] when unset")
    p.add_argument("--spark-conf", action="append", default=[], metavar="KEY=VALUE",
                   help="--engine spark: a Spark setting, repeatable (e.g. "
                   "spark.executor.memory=4g)")


class _OneLineParser(argparse.ArgumentParser):
    """A usage error is one line, like every other error (argparse prints the usage block
    first), from the (sub)command it concerns, naming that command's --help; a JSON record
    when the command line asks for JSON logs."""

    def __init__(self, *args: Any, json_errors: bool = False, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.json_errors = json_errors

    def add_subparsers(self, **kwargs: Any) -> Any:
        kwargs.setdefault("parser_class", partial(_OneLineParser, json_errors=self.json_errors))
        return super().add_subparsers(**kwargs)

    def parse_args(self, args: Any = None, namespace: Any = None) -> argparse.Namespace:
        # argparse reports unknown flags from the top parser, whose --help does not list them
        parsed, extra = self.parse_known_args(args, namespace)
        if extra:
            getattr(parsed, "parser", self).error(f"unrecognized arguments: {' '.join(extra)}")
        return parsed

    def error(self, message: str) -> NoReturn:
        commands = [a for a in self._actions if isinstance(a, argparse._SubParsersAction)]
        if commands and message.endswith("required: COMMAND"):  # no command given: list them
            message += f" (one of {', '.join(commands[0].choices)})"
        line = f"error: {self.prog}: {message}; see `{self.prog} --help`"
        self.exit(2, failure_line(line, 2, self.json_errors) + "\n")


def _commands(parser: argparse.ArgumentParser) -> None:
    """Each (sub)command parser records itself in the namespace (for `parse_args`), and
    errors call a subcommand COMMAND, not by its `dest` (pipeline_command)."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            action.metavar = "COMMAND"
            for child in action.choices.values():
                child.set_defaults(parser=child)
                _commands(child)


def build_parser(json_errors: bool = False) -> argparse.ArgumentParser:
    parser = _OneLineParser(prog="forecast", description=__doc__, json_errors=json_errors)
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    parser.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors")
    parser.add_argument("--log-format", choices=["plain", "json"], default="plain",
                        help="json: one JSON object per log line, with the MLflow run id")
    sub = parser.add_subparsers(dest="command", required=True)

    def log_format_flag(p: argparse.ArgumentParser) -> None:
        # Also accepted after the subcommand, where a scheduler's command line puts it.
        p.add_argument("--log-format", choices=["plain", "json"], default=argparse.SUPPRESS,
                       help="json: one JSON object per log line, with the MLflow run id")

    def tracking_flag(p: argparse.ArgumentParser,
                      default: str = "$MLFLOW_TRACKING_URI, then sqlite:///mlflow.db") -> None:
        p.add_argument("--tracking-uri", type=tracking_uri,
                       help=f"MLflow tracking URI (default: {default})")

    def config_flags(p: argparse.ArgumentParser, required: bool) -> None:
        p.add_argument("--config", required=required, help="YAML config file")
        p.add_argument("--data", help="data file (overrides data.path)")
        p.add_argument("--set", action="append", metavar="KEY=VALUE",
                       help="override a config key, e.g. --set train.epochs=5 (repeatable)")

    def with_config(p: argparse.ArgumentParser, required: bool, writes: bool = True) -> None:
        tracking_flag(p, "tracking.uri, $MLFLOW_TRACKING_URI, then sqlite:///mlflow.db")
        config_flags(p, required)
        if writes:  # tune's trials are MLflow runs only: it writes no output folder
            p.add_argument("--output-dir", type=folder,
                           help="where runs write their files (overrides output_dir)")

    p = sub.add_parser("train", help="train, evaluate against baselines, save the model")
    with_config(p, required=True)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("demo", help="the whole job on built-in synthetic data, no files needed")
    tracking_flag(p)
    p.add_argument("--output-dir", type=folder, help="where the demo writes its files")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config key")
    p.set_defaults(func=cmd_demo, config=None, data=None)

    p = sub.add_parser("evaluate", help="score a saved model and the baselines on a data split")
    p.add_argument("--model", required=True, help="model directory written by `forecast train`")
    p.add_argument("--block", choices=["val", "test"], default="test")
    # No tracking or output flags: evaluating reads the model and data and writes nothing.
    config_flags(p, required=False)
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("predict", help="forecast from a history file (CSV/Parquet)")
    p.add_argument("--model", required=True, help="model directory written by `forecast train`")
    p.add_argument("--history", required=True, help="history rows; see forecast/predictor.py")
    p.add_argument("--out", required=True, help="output .csv or .parquet")
    p.add_argument("--horizon", type=positive_int, help="steps to forecast (default: the model's)")
    band_flags(p)
    p.set_defaults(func=cmd_predict)

    models = sub.add_parser("models", help="registered model versions").add_subparsers(
        dest="models_command", required=True)
    p = models.add_parser("list", help="versions, aliases and gate scores of a model")
    p.add_argument("name")
    tracking_flag(p)
    p.set_defaults(func=cmd_models_list)
    p = models.add_parser("promote", help="make a version champion by hand (recorded)")
    p.add_argument("name")
    p.add_argument("version")
    tracking_flag(p)
    p.set_defaults(func=cmd_models_promote)

    runs = sub.add_parser("runs", help="tracked runs").add_subparsers(
        dest="runs_command", required=True)
    p = runs.add_parser("compare", help="the last runs of an experiment side by side")
    p.add_argument("--experiment", required=True)
    p.add_argument("--last", type=positive_int, default=10, help="how many runs (newest first)")
    tracking_flag(p)
    p.set_defaults(func=cmd_runs_compare)

    pipeline = sub.add_parser("pipeline", help="scheduled batch jobs").add_subparsers(
        dest="pipeline_command", required=True)
    p = pipeline.add_parser("train", help="the unattended training job: lock, skip if "
                            "unchanged, gates, train, register (exit codes: docs/errors.md)")
    with_config(p, required=True)
    log_format_flag(p)
    p.add_argument("--force", action="store_true",
                   help="train even if data and config equal the last successful run's")
    p.add_argument("--as-of", help="the time the freshness gate measures data age against "
                   "(ISO 8601; default: now)")
    p.set_defaults(func=cmd_pipeline_train)
    p = pipeline.add_parser("batch-forecast", help="forecast many series from a file with a "
                            "registered model, in chunks")
    batch_forecast_flags(p)
    log_format_flag(p)
    p.set_defaults(func=cmd_batch_forecast)

    p = sub.add_parser("tune", help="hyperparameter search as nested MLflow runs (validation "
                       "split only)")
    with_config(p, required=True, writes=False)
    log_format_flag(p)
    p.add_argument("--trials", type=positive_int, help="most trials (default: tune.trials)")
    p.add_argument("--budget", type=duration_minutes, metavar="DURATION",
                   help="the search ends within this: 30m, 90s, 2h (default: "
                   "tune.budget_minutes)")
    p.add_argument("--write-config", type=Path, metavar="PATH",
                   help="write the config with the best trial's settings here, for "
                   "`forecast train --config PATH`")
    p.set_defaults(func=cmd_tune)

    p = sub.add_parser("backtest", help="rolling-origin evaluation of a trained model against "
                       "the baselines: scores per cutoff and horizon step, tracked in MLflow")
    p.add_argument("--model", required=True, help="a model directory, models:/NAME@ALIAS or "
                   "models:/NAME/VERSION")
    p.add_argument("--cutoffs", type=positive_int, required=True, metavar="N",
                   help="how many forecast origins")
    p.add_argument("--step", type=positive_int, metavar="S",
                   help="time steps between cutoffs (default: the model's horizon)")
    p.add_argument("--until", metavar="TIME", help="the last cutoff is at or before this time "
                   "(default: the latest with a whole horizon after it)")
    p.add_argument("--out", default="backtest.csv", help="scores per cutoff (CSV); per "
                   "horizon step beside it as <stem>_by_step.csv (default: backtest.csv)")
    p.add_argument("--refit", action="store_true", help="train again at every cutoff from the "
                   "rows up to it, one nested MLflow run per cutoff (slow: N trainings)")
    p.add_argument("--experiment", default="forecast-backtest", type=not_blank("--experiment"),
                   help="MLflow experiment of the backtest run (default: forecast-backtest)")
    config_flags(p, required=False)
    tracking_flag(p)
    log_format_flag(p)
    p.set_defaults(func=cmd_backtest)

    p = sub.add_parser("serve", help="HTTP prediction service for a registered model")
    p.add_argument("--model", help="models:/NAME@ALIAS, models:/NAME/VERSION or a model "
                   "directory (default: $FORECAST_MODEL_URI, then the demo's champion)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=tcp_port, default=8000)
    p.add_argument("--workers", type=positive_int, default=1)
    p.add_argument("--reload-interval", type=positive_float, help="seconds between alias checks")
    tracking_flag(p, "$FORECAST_TRACKING_URI, $MLFLOW_TRACKING_URI, then sqlite:///mlflow.db")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("config", help="print the resolved config with every default")
    p.add_argument("--config", help="YAML config file (default: built-in defaults)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config key")
    p.set_defaults(func=cmd_config)
    _commands(parser)
    return parser


def _failed(args: argparse.Namespace, message: str, code: int) -> int:
    """The one line a failed command ends with: plain on stderr, or a JSON log record (with
    its exit code) when the logs are JSON, so that a log collector sees the failure too."""
    if args.log_format == "json":
        log.error(message, extra={"status": "failed", "exit_code": code})
    else:
        print(message, file=sys.stderr)
    return code


def main(argv: list[str] | None = None) -> int:
    parser = build_parser(json_requested(sys.argv[1:] if argv is None else argv))
    args = parser.parse_args(argv)
    setup_logging(json_format=args.log_format == "json", quiet=args.quiet)
    # SIGTERM (Kubernetes, Airflow, systemd stopping a job) ends a command as Ctrl-C does, in
    # every phase: an MLflow run is closed KILLED, not left RUNNING by a process that just died
    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, signal.default_int_handler) if main_thread else None
    try:
        code = int(args.func(args))
        sys.stdout.flush()  # here, where a closed pipe can still be handled, not at exit
        return code
    except ForecastError as err:
        end_open_runs("FAILED")
        if args.debug:
            raise
        return _failed(args, f"error: {err}", err.exit_code)
    except MlflowException as err:  # the tracking server or registry refused an operation
        end_open_runs("FAILED")
        if args.debug:
            raise
        return _failed(args, f"error: MLflow: {err.message}", TrackingError.exit_code)
    except KeyboardInterrupt:
        end_open_runs("KILLED")
        return _failed(args, "interrupted", 130)
    except BrokenPipeError:  # `forecast models list NAME | head`: the reader has gone
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no error at exit
        return 1
    except BaseException:
        end_open_runs("FAILED")
        raise
    finally:
        if main_thread:
            signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    sys.exit(main())
