"""Request dependencies: the app's state and the optional bearer-token check.

They are `async def` on purpose: FastAPI runs sync dependencies in a thread pool, a hop per
dependency per request that the latency budget cannot afford."""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, HTTPException, Request, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from serving.metrics import ServiceMetrics
from serving.model_store import LoadedModel, ModelStore
from serving.settings import Settings


@dataclass
class AppState:
    """Everything the factory builds for one app; routes reach it through dependencies."""

    settings: Settings
    store: ModelStore
    metrics: ServiceMetrics


async def get_state(request: Request) -> AppState:
    return request.app.state.forecast


State = Annotated[AppState, Depends(get_state)]

_bearer = HTTPBearer(auto_error=False)


async def require_token(
    state: State,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> None:
    expected = state.settings.api_token
    if expected is None:
        return
    given = credentials.credentials if credentials is not None else ""
    # constant-time comparison, so response timing does not reveal the token
    if not hmac.compare_digest(given.encode(), expected.get_secret_value().encode()):
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, "missing or invalid bearer token",
                            headers={"WWW-Authenticate": "Bearer"})


async def current_model(state: State) -> LoadedModel:
    """The model serving now; a request keeps this reference even if a swap happens."""
    loaded = state.store.current
    if loaded is None:
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE,
                            f"model not loaded yet: {state.store.last_error or 'loading'}")
    return loaded


Model = Annotated[LoadedModel, Depends(current_model)]
