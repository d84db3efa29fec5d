"""Model registry: register a run's model as `challenger`, and move `champion` only when the
challenger beats its own run's linear and seasonal-naive baselines on validation, the current
champion (re-scored now, on the challenger's evaluation windows) and the naive baseline. Also
where a model URI (`models:/NAME@ALIAS`, `models:/NAME/VERSION` or a bundle directory) is
parsed and loaded, for every consumer: the service, batch forecasting."""

from __future__ import annotations

import contextlib
import logging
import random
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import NamedTuple

import mlflow
import numpy as np
import torch
from mlflow import MlflowClient
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.models.model import ModelInfo

from forecast.baselines import naive
from forecast.bundle import load_bundle
from forecast.config import TrackingConfig
from forecast.errors import ConfigError, ForecastError, TrackingError, first_line
from forecast.evaluate import Evaluation
from forecast.metrics import MetricAccumulator, Scores, mase_scale
from forecast.packaging import bundle_path
from forecast.predictor import Forecaster
from forecast.windows import Prepared

log = logging.getLogger(__name__)

CHAMPION, CHALLENGER = "champion", "challenger"
# the gate's critical section (score the champion, register) takes seconds
GATE_LOCK_WAIT_S, GATE_LOCK_STALE_S = 600.0, 120.0


@dataclass
class GateDecision:
    promoted: bool
    reason: str
    metric: str
    challenger_score: float
    naive_score: float
    champion_score: float | None = None
    champion_version: str | None = None

    def tags(self) -> dict[str, str]:
        tags = {
            "gate.decision": "promoted" if self.promoted else "rejected",
            "gate.reason": self.reason, "gate.metric": self.metric,
            "gate.challenger_score": f"{self.challenger_score:.6g}",
            "gate.naive_score": f"{self.naive_score:.6g}",
        }
        if self.champion_score is not None:
            tags["gate.champion_score"] = f"{self.champion_score:.6g}"
        if self.champion_version is not None:
            tags["gate.champion_version"] = self.champion_version
        return tags


def score_on_windows(forecaster: Forecaster, prepared: Prepared, block: str = "test",
                     batch_size: int = 512) -> tuple[Scores, Scores]:
    """Score a forecaster on `prepared`'s windows of `block`, and naive on the same windows.

    The forecaster sees raw history ending where each window's target begins (its own
    lookback, its own scaler); errors are measured in `prepared`'s scaled units, so the scores
    of models with different lookbacks or scalers are comparable.
    """
    H, L = prepared.horizon, prepared.lookback
    if forecaster.channels != prepared.series.channels:
        raise ForecastError(f"channels {forecaster.channels} differ from the data's "
                            f"{prepared.series.channels}")
    if forecaster.horizon < H:
        raise ForecastError(f"horizon {forecaster.horizon} is shorter than {H}")
    mean, scale = prepared.scaler.mean, prepared.scaler.scale
    denom = mase_scale(prepared.train_rows(), forecaster.meta.season)
    model_acc = MetricAccumulator(H, mean, scale, denom)
    naive_acc = MetricAccumulator(H, mean, scale, denom)
    windows = prepared.windows(block)
    index = windows.index
    for lo in range(0, len(windows), batch_size):
        k = torch.arange(lo, min(lo + batch_size, len(windows)))
        run, starts = index.locate(k)
        x, y = windows.gather(k)  # scaled [B x L x C], [B x H x C]
        histories = []
        for r, start in zip(run.tolist(), starts.tolist(), strict=True):
            s = int(index.series[r])
            target = start - int(prepared.offsets[s]) + L  # first target row in series s
            values = prepared.series.values[s]
            histories.append(values[max(0, target - forecaster.lookback): target])
        pred = forecaster.predict_arrays(histories, H)
        model_acc.update(torch.from_numpy(((pred - mean) / scale).astype(np.float32)), y)
        naive_acc.update(naive(x, H), y)
    return model_acc.result(), naive_acc.result()


def champion_version(client: MlflowClient, name: str) -> ModelVersion | None:
    try:
        return client.get_model_version_by_alias(name, CHAMPION)
    except MlflowException:
        return None  # no registered model, or no champion alias yet


def load_version_forecaster(uri: str, name: str, version: str) -> Forecaster:
    """Download a registered version and load its bundle (safetensors + JSON, no pickle)."""
    # Resolve the version in `uri`'s registry here: MLflow resolves a "models:/" URI in the
    # process-wide registry, which is not `uri` in a server started with --tracking-uri.
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    source = client.get_model_version_download_uri(name, version)
    with tempfile.TemporaryDirectory() as tmp:
        local = mlflow.artifacts.download_artifacts(
            artifact_uri=source, dst_path=tmp, tracking_uri=uri)
        return Forecaster(load_bundle(bundle_path(local)))


@dataclass(frozen=True)
class ModelSource:
    """Where the model comes from: a registry alias, a fixed version, or a local directory."""

    uri: str
    name: str
    alias: str | None = None
    version: str | None = None  # "local" for a bundle directory

    @property
    def is_local(self) -> bool:
        return self.version == "local"

    @staticmethod
    def parse(uri: str) -> ModelSource:
        if not uri.startswith("models:/"):
            return ModelSource(uri, Path(uri).name or uri, version="local")
        rest = uri.removeprefix("models:/")
        if "@" in rest:
            name, alias = rest.split("@", 1)
            if name and alias:
                return ModelSource(uri, name, alias=alias)
        else:
            name, _, version = rest.partition("/")
            if name and version.isascii() and version.isdigit():  # MLflow's raw error else
                return ModelSource(uri, name, version=version)
        raise ConfigError(f"model URI {uri!r}: use models:/NAME@ALIAS, models:/NAME/VERSION or "
                          "a model directory written by `forecast train`")


class ResolvedModel(NamedTuple):
    forecaster: Forecaster
    name: str
    version: str  # "local" for a bundle directory
    run_id: str | None


def resolve_version(source: ModelSource, tracking_uri: str) -> tuple[str, str | None]:
    """The registry version the source points to now, and its run id."""
    if source.is_local:
        return "local", None
    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    try:
        if source.alias is not None:
            mv = client.get_model_version_by_alias(source.name, source.alias)
        else:
            mv = client.get_model_version(source.name, str(source.version))
    except MlflowException as err:
        # no such name, alias or version is the user's to fix (exit 1); anything else means
        # the store failed (exit 5)
        if err.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
            raise ForecastError(f"{source.uri} cannot be resolved in tracking store "
                                f"{tracking_uri}: {err.message}; check the name and alias or "
                                f"version (`forecast models list {source.name}`) and "
                                "--tracking-uri") from None
        raise TrackingError(f"registry unreachable: {source.uri} cannot be resolved, tracking "
                            f"store {tracking_uri} failed: {first_line(err)}") from None
    return str(mv.version), mv.run_id


def load_source_version(source: ModelSource, tracking_uri: str, version: str) -> Forecaster:
    """The bundle of `version` (from `resolve_version`): a download, or the directory itself."""
    if source.is_local:
        return Forecaster(load_bundle(source.uri))
    return load_version_forecaster(tracking_uri, source.name, version)


def load_model(source: ModelSource | str, tracking_uri: str) -> ResolvedModel:
    """Resolve a model URI or directory and load it. `tracking_uri` is unused for a directory."""
    src = source if isinstance(source, ModelSource) else ModelSource.parse(source)
    version, run_id = resolve_version(src, tracking_uri)
    return ResolvedModel(load_source_version(src, tracking_uri, version), src.name, version,
                         run_id)


def below_baselines(validation: Evaluation, metric: str) -> str:
    """The baselines that the model scores worse than on validation, in words ('' if none):
    the linear (Ridge per channel) and seasonal-naive forecasts the same run scored."""
    mine = getattr(validation.model, metric)
    worse = [f"the {name.replace('_', '-')} baseline ({getattr(scores, metric):.4f})"
             for name, scores in validation.baselines.items()
             if name in ("linear", "seasonal_naive") and mine > getattr(scores, metric)]
    return f"{metric} {mine:.4f} on validation loses to {' and '.join(worse)}" if worse else ""


def decide(client: MlflowClient, uri: str, cfg: TrackingConfig, name: str,
           challenger: Forecaster, prepared: Prepared, validation: Evaluation) -> GateDecision:
    """Compare the challenger with its own baselines on validation, then with the current
    champion on the same test windows."""
    metric = cfg.metric
    ours, naive_scores = score_on_windows(challenger, prepared)
    mine, naive_score = getattr(ours, metric), getattr(naive_scores, metric)
    base = dict(metric=metric, challenger_score=mine, naive_score=naive_score)
    beats_naive = mine < naive_score
    below = below_baselines(validation, metric)
    if below and not cfg.allow_below_baselines:
        # a model worse than a forecast the run could ship instead is never served, not even
        # as the first version: serving nothing is plainer than serving that
        return GateDecision(False, f"{below}; train a model that beats them (e.g. "
                            "model.linear_skip with skip_fit least_squares), or set "
                            "tracking.allow_below_baselines=true to promote it anyway", **base)
    caveat = f" (allowed below baselines: {below})" if below else ""
    current = champion_version(client, name)
    if current is None:
        # The first model is champion, so that serving has a model; the reason says plainly
        # when it is worse than naive.
        if not beats_naive:
            caveat += f" (warning: worse than naive, {mine:.4f} vs {naive_score:.4f})"
        return GateDecision(True, f"first model: no champion yet{caveat}", **base)
    if not beats_naive:
        return GateDecision(False, f"does not beat the naive baseline on {metric} "
                            f"({mine:.4f} vs {naive_score:.4f})", **base)
    try:
        champion = load_version_forecaster(uri, name, str(current.version))
        theirs = getattr(score_on_windows(champion, prepared)[0], metric)
    except ForecastError as err:
        return GateDecision(False, f"champion v{current.version} cannot be scored on these "
                            f"windows ({err}); promote by hand if intended",
                            champion_version=str(current.version), **base)
    base.update(champion_score=theirs, champion_version=str(current.version))
    needed = theirs * (1 - cfg.margin)
    if mine < needed:
        return GateDecision(True, f"beats champion v{current.version} on {metric}: {mine:.4f} < "
                            f"{theirs:.4f} x (1 - margin {cfg.margin:g}){caveat}", **base)
    return GateDecision(False, f"not better than champion v{current.version} on {metric} by "
                        f"margin {cfg.margin:g}: {mine:.4f} vs {theirs:.4f}", **base)


def _lock_name(name: str) -> str:
    return f"{name}.gate-lock"


@contextlib.contextmanager
def gate_lock(client: MlflowClient, name: str, owner: str, wait_s: float = GATE_LOCK_WAIT_S,
              stale_s: float = GATE_LOCK_STALE_S) -> Iterator[None]:
    """Hold the gate of registered model `name`: one challenger at a time reads the champion,
    decides, registers and moves the aliases, so two deciding at once cannot both replace the
    same champion. The lock is a registered model `NAME.gate-lock`: creating a name is atomic
    in every MLflow store (its primary key), so it works through any tracking server, with no
    access to the database behind it. A lock this waiter has seen held by the same holder for
    `stale_s` is taken as left by a job that died, and removed."""
    lock, deadline = _lock_name(name), time.monotonic() + wait_s
    seen: tuple[int, float] | None = None  # the holder's creation time, when first seen
    while True:
        try:
            client.create_registered_model(lock, tags={"forecast.lock_owner": owner},
                                           description="held while a `forecast train` job "
                                           f"runs the promotion gate of {name!r}")
            break
        except MlflowException as err:
            # SQL stores look the holder up after the failed insert: when it released the lock
            # in between, "already exists" arrives as "does not exist". Both mean: contended.
            if err.error_code not in ("RESOURCE_ALREADY_EXISTS", "RESOURCE_DOES_NOT_EXIST"):
                raise
        try:
            created = client.get_registered_model(lock).creation_timestamp
        except MlflowException:
            continue  # released in between: try again at once
        now = time.monotonic()
        if seen is None or seen[0] != created:
            seen = (created, now)
        elif now - seen[1] > stale_s:
            log.warning("removing the gate lock of %r: held by the same job for over %.0fs",
                        name, stale_s)
            with contextlib.suppress(MlflowException):
                client.delete_registered_model(lock)
            continue
        if now > deadline:
            raise TrackingError(f"the promotion gate of {name!r} stayed locked for {wait_s:.0f}s"
                                f" (registered model {lock!r}); if no job is registering, "
                                "delete that registered model")
        time.sleep(random.uniform(0.1, 0.4))
    try:
        yield
    finally:
        try:
            client.delete_registered_model(lock)
        except MlflowException as err:  # the next job takes it over once stale
            log.error("could not release the gate lock %r: %s", lock, first_line(err))


def register(client: MlflowClient, name: str, model: ModelInfo, run_id: str,
             decision: GateDecision, tags: dict[str, str] | None = None) -> ModelVersion:
    """Create the version, tag it, alias it; on any failure remove it again (never half-done).
    Call it holding `gate_lock`."""
    try:
        client.get_registered_model(name)
    except MlflowException:
        client.create_registered_model(name, description="Forecast models registered by "
                                       "`forecast train`; see the champion alias.")
    # MLflow 3's logged model is `models:/m-<id>`: a tracking server accepts it as a version's
    # source only with its model id
    version = client.create_model_version(name, model.model_uri, run_id=run_id,
                                          model_id=model.model_id)
    try:
        for key, value in {**decision.tags(), **(tags or {})}.items():
            client.set_model_version_tag(name, version.version, key, value)
        client.set_registered_model_alias(name, CHALLENGER, version.version)
        if decision.promoted:
            client.set_registered_model_alias(name, CHAMPION, version.version)
    except BaseException:
        client.delete_model_version(name, version.version)
        raise
    return version


def version_number(text: str, name: str) -> str:
    """A model version as MLflow writes it ("2"): MLflow also reads "02", " 2" and "+2" as 2,
    which would make the current champion look like another version."""
    # ASCII digits only ("²" passes isdigit but not int()); below SQLite's integer limit
    if not (text.isascii() and text.isdigit()) or not 1 <= int(text) < 2**63:
        raise ForecastError(f"version {text!r} is not a version number; give one of "
                            f"`forecast models list {name}`'s, e.g. 2")
    return str(int(text))


def promote(client: MlflowClient, name: str, version: str) -> str | None:
    """Manual override: make `version` champion; record it as manual. Returns the previous
    champion's version (`version` itself when it already was, and then nothing changes)."""
    version = version_number(version, name)
    if not client.search_model_versions(f"name = {filter_literal(name)}", max_results=1):
        raise ForecastError(f"no registered model named {name!r}; see `forecast models list "
                            "NAME` for a name that training registered")
    try:
        client.get_model_version(name, version)
    except MlflowException as err:
        if err.error_code not in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
            raise  # the store failed (exit 5), not the user's name or number
        raise ForecastError(f"model {name!r} has no version {version!r}; see "
                            f"`forecast models list {name}`") from None
    with gate_lock(client, name, "forecast models promote"):  # not amid a gate's decision
        previous = champion_version(client, name)
        if previous is not None and str(previous.version) == str(version):
            return str(version)  # already champion: its gate record stays as it was
        client.set_registered_model_alias(name, CHAMPION, version)
        stamp = datetime.now(UTC).isoformat(timespec="seconds")
        client.set_model_version_tag(name, version, "gate.decision", "manual")
        client.set_model_version_tag(
            name, version, "gate.reason", f"promoted by hand at {stamp}"
            + (f", replacing v{previous.version}" if previous else ""))
    return str(previous.version) if previous else None


def filter_literal(value: str) -> str:
    """`value` as a string literal of an MLflow search filter.

    MLflow's filter parser takes no escapes (a backslash is kept as typed, so `\\'` matches
    nothing): a value is quoted with whichever quote it does not contain."""
    if "'" not in value:
        return f"'{value}'"
    if '"' not in value:
        return f'"{value}"'
    raise ForecastError(f"{value!r} holds both ' and \", which an MLflow search cannot match; "
                        "use a name without quotes")


def list_versions(client: MlflowClient, name: str, uri: str) -> list[dict[str, str]]:
    versions = client.search_model_versions(f"name = {filter_literal(name)}")
    if not versions:
        raise ForecastError(f"no registered model named {name!r} in the tracking store {uri}; "
                            "check the name, or --tracking-uri")
    # search results do not carry aliases on every store; the registered model does
    aliases: dict[str, list[str]] = {}
    for alias, number in client.get_registered_model(name).aliases.items():
        aliases.setdefault(str(number), []).append(alias)
    rows = []
    for v in sorted(versions, key=lambda v: int(v.version), reverse=True):
        rows.append({
            "version": str(v.version),
            "aliases": ",".join(sorted(aliases.get(str(v.version), []))) or "-",
            "decision": v.tags.get("gate.decision", "-"),
            # yes: the Transformer's forecast is used; no: validation kept the linear skip alone
            "encoder": {"true": "no", "false": "yes"}.get(v.tags.get("model.linear_only", ""),
                                                           "-"),
            "metric": v.tags.get("gate.metric", "-"),
            "score": v.tags.get("gate.challenger_score", "-"),
            "champion_then": v.tags.get("gate.champion_score", "-"),
            "created": datetime.fromtimestamp(v.creation_timestamp / 1000, UTC)
            .strftime("%Y-%m-%d %H:%M"),
            "run_id": v.run_id or "-",
            "reason": v.tags.get("gate.reason", ""),
        })
    return rows

