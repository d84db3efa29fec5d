"""What model answers: name, version, shape and its test metrics."""

from __future__ import annotations

from fastapi import APIRouter

from serving.deps import Model
from serving.schemas import ModelInfo

router = APIRouter(prefix="/v1", tags=["model"])


@router.get("/model", response_model=ModelInfo, summary="The model being served")
async def model_info(model: Model) -> ModelInfo:
    meta = model.forecaster.meta
    return ModelInfo(
        name=model.name, version=model.version, alias=model.alias, run_id=model.run_id,
        source=model.source, lookback=meta.lookback, horizon=meta.horizon,
        min_history=meta.min_history, channels=meta.channels, frequency=meta.freq,
        metrics={k: v for k, v in meta.metrics.items() if k.startswith("test_")},
    )
