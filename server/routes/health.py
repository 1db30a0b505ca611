"""GET /health (liveness), /ready (readiness), /metrics (Prometheus)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST

from server.protocol import EngineInfo, HealthResponse, ReadyResponse
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
    sched = state.scheduler
    body = ReadyResponse(
        status=state.status,
        detail=state.detail,
        model=state.engine.name if state.engine is not None else None,
        limits=state.settings.public_limits(),
        queue_depth=sched.queue_depth if sched is not None else 0,
        running=sched.running_rows if sched is not None else 0,
        engine=_engine_info(state.engine),
    )
    code = 200 if state.status == "ready" else 503
    headers = {} if code == 200 else {"Retry-After": str(state.settings.retry_after_s)}
    return JSONResponse(body.model_dump(), status_code=code, headers=headers)


@router.get("/metrics", response_class=Response)
async def metrics(request: Request) -> Response:
    """Prometheus text format."""
    state = get_state(request)
    if state.scheduler is not None:
        state.metrics.queue_depth.set(state.scheduler.queue_depth)
        state.metrics.running.set(state.scheduler.running_rows)
    return Response(state.metrics.render(), media_type=CONTENT_TYPE_LATEST)


def _engine_info(engine: Any) -> EngineInfo | None:
    if engine is None:
        return None
    runner = engine.runner
    return EngineInfo(
        device=str(runner.device),
        dtype=str(runner.dtype).removeprefix("torch."),
        slots=runner.slots,
        max_context=runner.max_context,
        kv_cache_bytes=runner.cache_bytes,
        max_neg_features=runner.max_neg,
        mode=runner.status.mode,
        mode_reason=runner.status.reason,
        buckets={str(b): how for b, how in runner.status.buckets.items()},
        compile_s=runner.status.compile_s,
    )
