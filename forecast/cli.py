"""The `forecast` command line. Errors print as one line with a non-zero exit code;
`--debug` shows the traceback."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from importlib import resources
from pathlib import Path

import pandas as pd
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from forecast.bundle import load_bundle
from forecast.compare import compare_runs
from forecast.config import Config, dump_config, load_config
from forecast.data import read_table
from forecast.errors import DataError, ForecastError, TrackingError
from forecast.evaluate import evaluate
from forecast.model import describe
from forecast.predictor import Forecaster
from forecast.registry import list_versions, promote
from forecast.runner import TrainOutcome, load_data, train_and_evaluate
from forecast.tracking import (
    TrackedOutcome,
    default_uri,
    preflight,
    resolve_uri,
    train_tracked,
)
from forecast.windows import prepare, scaler_from_params

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
    print()
    print(outcome.evaluation.table())
    print()
    for note in outcome.series.notes:
        print(f"note: {note}")
    print(f"model:   {outcome.model_dir}")
    print(f"metrics: {outcome.output_dir / 'metrics.json'}")


def _train(args: argparse.Namespace) -> TrackedOutcome | None:
    cfg = _resolve(args)
    if not cfg.tracking.enabled:
        _report(train_and_evaluate(cfg))
        return None
    uri = resolve_uri(cfg.tracking, args.tracking_uri)
    tracked = train_tracked(cfg, uri)
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
        print(f"MLflow UI:     mlflow ui --backend-store-uri {tracked.tracking_uri}")
    return 0


def _client(args: argparse.Namespace) -> tuple[str, MlflowClient]:
    uri = default_uri(args.tracking_uri)
    preflight(uri, 10.0)
    return uri, MlflowClient(tracking_uri=uri, registry_uri=uri)


def cmd_models_list(args: argparse.Namespace) -> int:
    _, client = _client(args)
    rows = list_versions(client, args.name)
    print(pd.DataFrame(rows).to_string(index=False))
    return 0


def cmd_models_promote(args: argparse.Namespace) -> int:
    _, client = _client(args)
    previous = promote(client, args.name, args.version)
    was = f" (was v{previous})" if previous else ""
    print(f"{args.name} v{args.version} is now champion{was}; recorded as a manual promotion")
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
    print(dump_config(_resolve(args)), end="")
    return 0


def _model_dir_config(model_dir: Path, config: str | None) -> Path:
    path = Path(config) if config else model_dir.parent / "config.yaml"
    if not path.is_file():
        raise ForecastError(f"no config at {str(path)!r}; pass --config with the file the model "
                            "was trained with")
    return path


def cmd_evaluate(args: argparse.Namespace) -> int:
    model_dir = Path(args.model)
    bundle = load_bundle(model_dir)
    args.config = _model_dir_config(model_dir, args.config)
    cfg = _resolve(args)
    series = load_data(cfg)
    if series.channels != bundle.meta.channels:
        raise DataError(f"data channels {series.channels} differ from the model's "
                        f"{bundle.meta.channels}")
    scaler = scaler_from_params(bundle.mean, bundle.scale)
    prepared = prepare(series, cfg.split, cfg.windows, scaler)
    result = evaluate(bundle.model, prepared, cfg.eval, bundle.meta.season, args.block)
    print(result.table())
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    forecaster = Forecaster(load_bundle(args.model))
    history = read_table(args.history)
    forecast = forecaster.predict_frame(history, args.horizon)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.suffix.lower() in (".parquet", ".pq"):
        forecast.to_parquet(out, index=False)
    elif out.suffix.lower() == ".csv":
        forecast.to_csv(out, index=False)
    else:
        raise ForecastError(f"--out {str(out)!r}: use a .csv or .parquet file name")
    n = forecast["series_id"].nunique()
    print(f"wrote {len(forecast)} rows ({n} series x {len(forecast) // max(n, 1)} steps) to {out}")
    return 0


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
    from serving.settings import Settings

    try:
        Settings()
    except ValueError as err:
        raise ForecastError(f"invalid service settings: {err}") from None
    print(f"serving {env['FORECAST_MODEL_URI']} on http://{args.host}:{args.port} "
          f"(docs at /docs)", flush=True)
    uvicorn.run("serving.app:create_app", factory=True, host=args.host, port=args.port,
                workers=args.workers, log_level="warning" if args.quiet else "info",
                access_log=False)
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="forecast", description=__doc__)
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    parser.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors")
    sub = parser.add_subparsers(dest="command", required=True)

    def tracking_flag(p: argparse.ArgumentParser) -> None:
        p.add_argument("--tracking-uri", help="MLflow tracking URI (default: tracking.uri, "
                       "$MLFLOW_TRACKING_URI, then sqlite:///mlflow.db)")

    def with_config(p: argparse.ArgumentParser, required: bool) -> None:
        tracking_flag(p)
        p.add_argument("--config", required=required, help="YAML config file")
        p.add_argument("--data", help="data file (overrides data.path)")
        p.add_argument("--output-dir", help="where runs write their files (overrides output_dir)")
        p.add_argument("--set", action="append", metavar="KEY=VALUE",
                       help="override a config key, e.g. --set train.epochs=5 (repeatable)")

    p = sub.add_parser("train", help="train, evaluate against baselines, save the model")
    with_config(p, required=True)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("demo", help="the whole job on built-in synthetic data, no files needed")
    tracking_flag(p)
    p.add_argument("--output-dir", help="where the demo writes its files")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config key")
    p.set_defaults(func=cmd_demo, config=None, data=None)

    p = sub.add_parser("evaluate", help="score a saved model and the baselines on a data split")
    p.add_argument("--model", required=True, help="model directory written by `forecast train`")
    p.add_argument("--block", choices=["val", "test"], default="test")
    with_config(p, required=False)
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("predict", help="forecast from a history file (CSV/Parquet)")
    p.add_argument("--model", required=True, help="model directory written by `forecast train`")
    p.add_argument("--history", required=True, help="history rows; see forecast/predictor.py")
    p.add_argument("--out", required=True, help="output .csv or .parquet")
    p.add_argument("--horizon", type=positive_int, help="steps to forecast (default: the model's)")
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

    p = sub.add_parser("serve", help="HTTP prediction service for a registered model")
    p.add_argument("--model", help="models:/NAME@ALIAS, models:/NAME/VERSION or a model "
                   "directory (default: $FORECAST_MODEL_URI, then the demo's champion)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=positive_int, default=8000)
    p.add_argument("--workers", type=positive_int, default=1)
    p.add_argument("--reload-interval", type=float, help="seconds between alias checks")
    tracking_flag(p)
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("config", help="print the resolved config with every default")
    p.add_argument("--config", help="YAML config file (default: built-in defaults)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config key")
    p.set_defaults(func=cmd_config)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    try:
        return int(args.func(args))
    except ForecastError as err:
        if args.debug:
            raise
        print(f"error: {err}", file=sys.stderr)
        return err.exit_code
    except MlflowException as err:  # the tracking server or registry refused an operation
        if args.debug:
            raise
        print(f"error: MLflow: {err.message}", file=sys.stderr)
        return TrackingError.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
