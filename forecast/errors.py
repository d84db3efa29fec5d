"""User-facing errors. Each carries the exit code the CLI returns for it, so that schedulers
can tell bad input from a failed training run or an unreachable tracking server."""

from __future__ import annotations


class ForecastError(Exception):
    """A problem the user can fix; its message names the field and the fix."""

    exit_code = 1


class ConfigError(ForecastError):
    """The configuration (YAML, CLI flag or override) is invalid."""

    exit_code = 2


class DataError(ForecastError):
    """The data file is missing, malformed or fails a validation check."""

    exit_code = 3


class TrainingError(ForecastError):
    """Training could not finish (diverged, interrupted, out of memory...)."""

    exit_code = 4


class TrackingError(ForecastError):
    """The MLflow tracking server or model registry cannot be used."""

    exit_code = 5


class LockHeld(ForecastError):
    """Another run of the same pipeline for the same registered model holds the lock."""

    exit_code = 6


class StaleData(DataError):
    """The newest timestamp is older than the configured maximum age (the freshness gate)."""

    exit_code = 7


def first_line(err: BaseException) -> str:
    """An error's first line for a one-line message (library errors span many), or its type."""
    lines = str(err).strip().splitlines()
    return lines[0] if lines else type(err).__name__
