"""GET /health (liveness), /ready (readiness), /metrics (Prometheus)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST

from server.protocol.health import HealthResponse, ReadyResponse
from server.routes import get_runtime

router = APIRouter(tags=["health"])


@router.get("/health", response_model=HealthResponse)
async def health() -> HealthResponse:
    """Liveness: the process answers. Never touches the model."""
    return HealthResponse()


@router.get("/ready", response_model=ReadyResponse, responses={503: {"model": ReadyResponse}})
async def ready(request: Request) -> JSONResponse:
    """Readiness: 200 once the model, SAEs and catalog are loaded and warm-up succeeded; 503 otherwise."""
    answer = get_runtime(request).health.ready()
    return JSONResponse(answer.body.model_dump(), status_code=answer.status_code, headers=answer.headers)


@router.get("/metrics", response_class=Response)
async def metrics(request: Request) -> Response:
    """Prometheus text format."""
    return Response(get_runtime(request).health.metrics(), media_type=CONTENT_TYPE_LATEST)
