"""HTTP routes: one module per endpoint family; a route is one call to its family's serving object
(`server.serving`) and the HTTP around it (the body parsed by pydantic, a stream wrapped as SSE)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import TypeVar

from fastapi import Request
from fastapi.responses import StreamingResponse
from pydantic import BaseModel

from server.errors import ApiError
from server.runtime import ServerRuntime
from server.serving import Service
from server.sse import sse_response

Body = TypeVar("Body", bound=BaseModel)


def get_runtime(request: Request) -> ServerRuntime:
    runtime: ServerRuntime = request.app.state.steer
    return runtime


def get_service(request: Request) -> Service:
    """The service, or 503 while loading / after a failed start."""
    runtime = get_runtime(request)
    if runtime.service is None:
        raise ApiError(
            503,
            f"not ready: {runtime.detail or runtime.status}",
            type="unavailable",
            headers={"Retry-After": str(runtime.settings.retry_after_s)},
        )
    return runtime.service


def respond(answer: Body | AsyncIterator[str]) -> Body | StreamingResponse:
    """A serving object's answer as HTTP: a response model as JSON, a stream of SSE frames as `text/event-stream`."""
    return answer if isinstance(answer, BaseModel) else sse_response(answer)
