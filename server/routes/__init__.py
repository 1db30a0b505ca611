"""HTTP routes: one module per endpoint family; they translate HTTP ↔ `serving.Service` and nothing more."""

from __future__ import annotations

from fastapi import Request

from server.errors import ApiError
from server.serving import Service
from server.state import ServerState


def get_state(request: Request) -> ServerState:
    return request.app.state.steer


def get_service(request: Request) -> Service:
    """The service, or 503 while loading / after a failed start."""
    state = get_state(request)
    if state.service is None:
        raise ApiError(
            503,
            f"not ready: {state.detail or state.status}",
            type="unavailable",
            headers={"Retry-After": str(state.settings.retry_after_s)},
        )
    return state.service
