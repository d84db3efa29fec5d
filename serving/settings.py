"""Service settings: one object, from flags or FORECAST_* environment variables."""

from __future__ import annotations

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_MODEL_URI = "models:/forecast-demo@champion"


class Settings(BaseSettings):
    """Read once by the app factory; every part of the service gets it from there."""

    model_config = SettingsConfigDict(env_prefix="FORECAST_", extra="forbid")

    model_uri: str = Field(
        DEFAULT_MODEL_URI,
        description="models:/NAME@ALIAS (hot-swapped when the alias moves), models:/NAME/VERSION, "
        "or a model directory written by `forecast train`.",
    )
    tracking_uri: str | None = Field(
        None, description="MLflow tracking/registry URI; default $MLFLOW_TRACKING_URI, then "
        "sqlite:///mlflow.db.",
    )
    api_token: SecretStr | None = Field(
        None, description="If set, /v1/* requires `Authorization: Bearer <token>`."
    )
    max_body_bytes: int = Field(16 * 2**20, gt=0, description="Larger bodies get 413.")
    max_series: int = Field(1024, gt=0, description="More series in one request get 413.")
    request_timeout_s: float = Field(30.0, gt=0, description="Requests still waiting (on a slow "
                                     "client's body) after this get 504.")
    reload_interval_s: float = Field(
        30.0, gt=0, description="How often the model alias is resolved again."
    )
    torch_threads: int = Field(
        1, gt=0, le=256,  # beyond, torch fails to start its threads with a traceback
        description="torch intra-op threads per worker. 1 gives the lowest latency for small "
        "requests (measured: 3.3 ms vs 7.9 ms p50 with 2 threads on 2 cores); raise it for "
        "large batch requests.",
    )

    @field_validator("api_token")
    @classmethod
    def _token_not_blank(cls, token: SecretStr | None) -> SecretStr | None:
        # an empty secret (an unset variable in a manifest) would match a request with no
        # Authorization header: refuse it rather than serve unprotected while looking protected
        if token is not None and not token.get_secret_value().strip():
            raise ValueError("FORECAST_API_TOKEN is set but empty: give it a token, or unset it "
                             "to serve without one")
        return token
