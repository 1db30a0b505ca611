"""GET /health (liveness), /ready (readiness), /metrics (Prometheus)."""

from __future__ import annotations

import dataclasses

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST

from server.engine.client import EngineClient, EngineLoad
from server.protocol.health import EngineInfo, HealthResponse, ReadyResponse
from server.routes import get_state

router = APIRouter(tags=["health"])


@router.get("/health", response_model=HealthResponse)
async def health() -> HealthResponse:
    """Liveness: the process answers. Never touches the model."""
    return HealthResponse()


@router.get("/ready", response_model=ReadyResponse, responses={503: {"model": ReadyResponse}})
async def ready(request: Request) -> JSONResponse:
    """Readiness: 200 once the model, SAEs and catalog are loaded and warm-up succeeded; 503 otherwise."""
    state = get_state(request)
    engine = state.engine
    load = engine.load() if engine is not None else EngineLoad()
    body = ReadyResponse(
        status=state.status,
        detail=state.detail,
        model=engine.name if engine is not None else None,
        limits=state.settings.public_limits(),
        queue_depth=load.queue_depth,
        running=load.running,
        engine=_engine_info(engine),
    )
    code = 200 if state.status == "ready" else 503
    headers = {} if code == 200 else {"Retry-After": str(state.settings.retry_after_s)}
    return JSONResponse(body.model_dump(), status_code=code, headers=headers)


@router.get("/metrics", response_class=Response)
async def metrics(request: Request) -> Response:
    """Prometheus text format."""
    state = get_state(request)
    if state.engine is not None:
        load = state.engine.load()
        state.metrics.queue_depth.set(load.queue_depth)
        state.metrics.running.set(load.running)
    return Response(state.metrics.render(), media_type=CONTENT_TYPE_LATEST)


def _engine_info(engine: EngineClient | None) -> EngineInfo | None:
    if engine is None:
        return None
    described = dataclasses.asdict(engine.describe())
    described["buckets"] = {str(b): how for b, how in described["buckets"].items()}
    return EngineInfo(**described)
