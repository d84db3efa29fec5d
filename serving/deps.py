"""Request dependencies: the app's state and the model serving now (the bearer token is checked
earlier, in serving.middleware).

They are `async def` on purpose: FastAPI runs sync dependencies in a thread pool, a hop per
dependency per request that the latency budget cannot afford."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, HTTPException, Request, status

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

async def current_model(state: State) -> LoadedModel:
    """The model serving now; a request keeps this reference even if a swap happens."""
    loaded = state.store.current
    if loaded is None:
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE,
                            f"model not loaded yet: {state.store.last_error or 'loading'}")
    return loaded


Model = Annotated[LoadedModel, Depends(current_model)]
