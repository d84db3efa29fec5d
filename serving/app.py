"""The app factory: `uvicorn --factory serving.app:create_app` or `forecast serve`."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

import numpy as np
import pandas as pd
import torch
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse

from serving import middleware
from serving.deps import AppState
from serving.metrics import ServiceMetrics
from serving.model_store import ModelStore
from serving.routes import forecast, health, metrics, model
from serving.settings import Settings

log = logging.getLogger(__name__)


async def watch_model(state: AppState) -> None:
    """Load the model, then resolve its alias every reload interval and swap when it moves."""
    store, stats = state.store, state.metrics
    while True:
        failures = store.reload_failures
        await asyncio.to_thread(store.refresh)
        if store.reload_failures > failures:
            stats.reload_failures.inc(store.reload_failures - failures)
        if store.current is not None:
            stats.serving(store.current.name, store.current.version)
            if store.source.alias is None:
                return  # a fixed version or a directory never moves
        await asyncio.sleep(state.settings.reload_interval_s)


async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    """422 with each problem's field path and message; the input is not echoed back."""
    detail = [{"loc": list(e.get("loc", ())), "msg": e.get("msg", ""), "type": e.get("type", "")}
              for e in exc.errors()]
    return JSONResponse({"detail": detail}, status_code=422)


def example_request(state: AppState) -> dict[str, Any]:
    """A request that works against the model being served (for /docs)."""
    loaded = state.store.current
    if loaded is None:
        channels, rows, freq = ["load_0", "load_1", "load_2", "load_3", "load_4"], 48, "h"
    else:
        f = loaded.forecaster
        channels, rows, freq = f.channels, f.meta.min_history, f.meta.freq
    t = np.arange(rows)
    stamps = pd.date_range("2025-01-01", periods=rows, freq=freq)
    history = {c: np.round(10 + 3 * np.sin(2 * np.pi * (t + 3 * k) / 24), 3).tolist()
               for k, c in enumerate(channels)}
    return {"series": [{"id": "example-1", "history": history,
                        "timestamps": [s.isoformat() for s in stamps]}], "horizon": 6}


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    torch.set_num_threads(settings.torch_threads)
    state = AppState(settings, ModelStore.create(settings.model_uri, settings.tracking_uri),
                     ServiceMetrics())

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        task = asyncio.create_task(watch_model(state))
        yield
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    app = FastAPI(title="forecast", version="1", lifespan=lifespan,
                  description="Forecasts from the registered model. POST /v1/forecast.")
    app.state.forecast = state
    app.add_exception_handler(RequestValidationError, validation_error)  # type: ignore[arg-type]
    for router in (health.router, forecast.router, model.router, metrics.router):
        app.include_router(router)
    middleware.install(app, state.metrics, settings.max_body_bytes, settings.request_timeout_s)

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = get_openapi(title=app.title, version=app.version,
                                             description=app.description, routes=app.routes)
        body = app.openapi_schema["paths"]["/v1/forecast"]["post"]["requestBody"]
        body["content"]["application/json"]["example"] = example_request(state)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    return app
