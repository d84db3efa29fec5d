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
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

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


JSON_ONLY = "send the body as JSON with the header Content-Type: application/json"


def _is_json(request: Request) -> bool:
    media = request.headers.get("content-type", "").split(";")[0].strip().lower()
    return media == "application/json" or media.endswith("+json")


def _problem(e: dict[str, Any]) -> dict[str, Any]:
    if e.get("type") == "json_invalid":  # FastAPI's loc is then a character offset, not a field
        at = e.get("loc", ())[-1]
        reason = e.get("ctx", {}).get("error", "")
        return {"loc": ["body"], "type": "json_invalid",
                "msg": f"the body is not valid JSON: {reason} at character {at}"}
    return {"loc": list(e.get("loc", ())), "msg": e.get("msg", ""), "type": e.get("type", "")}


async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    """422 with each problem's field path and message (the input is not echoed back), or 415
    when the body was not sent as JSON at all."""
    if request.method == "POST" and not _is_json(request):
        return JSONResponse({"detail": f"unsupported media type: {JSON_ONLY}"}, status_code=415)
    return JSONResponse({"detail": [_problem(e) for e in exc.errors()]}, status_code=422)


async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
    """FastAPI's own reply, but with a fix named where it reports only 'error parsing the body'
    (nesting or number sizes the JSON parser refuses, a body it cannot decode)."""
    if exc.status_code == 400 and exc.detail == "There was an error parsing the body":
        return JSONResponse({"detail": "the body could not be parsed: " + JSON_ONLY + " (UTF-8, "
                             "not compressed, numbers under 4300 digits, nested less than a "
                             "few hundred levels deep)"}, status_code=400)
    return await http_exception_handler(request, exc)


def example_request(state: AppState) -> dict[str, Any]:
    """A request that works against the model being served (for /docs)."""
    loaded = state.store.current
    if loaded is None:
        channels, rows, freq = ["load_0", "load_1", "load_2", "load_3", "load_4"], 48, "h"
        intervals = True
    else:
        f = loaded.forecaster
        channels, rows, freq = f.channels, f.meta.min_history, f.meta.freq
        intervals = f.bundle.calibration is not None and f.bundle.calibration.gives(0.8)
    t = np.arange(rows)
    stamps = pd.date_range("2025-01-01", periods=rows, freq=freq)
    history = {c: np.round(10 + 3 * np.sin(2 * np.pi * (t + 3 * k) / 24), 3).tolist()
               for k, c in enumerate(channels)}
    # the 80% interval, where the model's calibration gives it: intervals show up first here
    return {"series": [{"id": "example-1", "history": history,
                        "timestamps": [s.isoformat() for s in stamps]}], "horizon": 6,
            **({"levels": [80]} if intervals else {})}


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
        state.metrics.close()

    app = FastAPI(title="forecast", version="1", lifespan=lifespan,
                  description="Forecasts from the registered model. POST /v1/forecast.")
    app.state.forecast = state
    app.add_exception_handler(RequestValidationError, validation_error)  # type: ignore[arg-type]
    app.add_exception_handler(StarletteHTTPException, http_error)  # type: ignore[arg-type]
    for router in (health.router, forecast.router, model.router, metrics.router):
        app.include_router(router)
    token = settings.api_token.get_secret_value() if settings.api_token is not None else None
    middleware.install(app, state.metrics, settings.max_body_bytes, settings.request_timeout_s,
                       token)

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = get_openapi(title=app.title, version=app.version,
                                             description=app.description, routes=app.routes)
        paths = app.openapi_schema["paths"]
        body = paths["/v1/forecast"]["post"]["requestBody"]
        body["content"]["application/json"]["example"] = example_request(state)
        if token is not None:  # so that /docs offers "Authorize" for the /v1/ routes
            app.openapi_schema.setdefault("components", {})["securitySchemes"] = {
                "bearer": {"type": "http", "scheme": "bearer"}}
            for path, operations in paths.items():
                if path.startswith(middleware.PROTECTED):
                    for operation in operations.values():
                        operation["security"] = [{"bearer": []}]
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    return app
