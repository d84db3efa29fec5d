"""Liveness and readiness: open without a token, for orchestrators' probes."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from serving.deps import State
from serving.schemas import ModelRef, Readiness

router = APIRouter(tags=["health"])


# HEAD too: some probes send it (HAProxy's `option httpchk HEAD /healthz`, uptime monitors).
# A separate route left out of the schema: one route for both gave them one operationId.
@router.head("/healthz", include_in_schema=False)
@router.get("/healthz", summary="The process is alive")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.head("/readyz", include_in_schema=False)
@router.get("/readyz", response_model=Readiness, summary="A model is loaded",
            responses={503: {"model": Readiness, "description": "No model loaded yet"}})
async def readyz(state: State) -> JSONResponse:
    store = state.store
    loaded = store.current
    if loaded is None:
        body = Readiness(ready=False, model=None, detail=store.last_error or "model loading")
        return JSONResponse(body.model_dump(), status_code=503)
    detail = f"serving {loaded.name} v{loaded.version}"
    if store.last_error:
        detail += f"; the last reload failed, still serving v{loaded.version}: {store.last_error}"
    ref = ModelRef(name=loaded.name, version=loaded.version, alias=loaded.alias)
    return JSONResponse(Readiness(ready=True, model=ref, detail=detail).model_dump())
