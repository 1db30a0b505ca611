"""POST /generate: the native endpoint (steer, apply, compare; JSON or server-sent events)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from fastapi import Request as HttpRequest
from fastapi.responses import StreamingResponse

from server.protocol.common import ErrorResponse
from server.protocol.generate import GenerateRequest, GenerateResponse
from server.routes import get_service, respond
from server.strict_json import StrictJsonRoute

router = APIRouter(tags=["generate"], route_class=StrictJsonRoute)

ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse} for code in (401, 413, 422, 429, 500, 503, 504)
}


@router.post("/generate", response_model=GenerateResponse, responses=ERRORS)
async def generate(body: GenerateRequest, request: HttpRequest) -> GenerateResponse | StreamingResponse:
    """Generate text for one prompt or chat, steered per request.

    With `"stream": true` the answer is server-sent events: `token` events (`{"text": ...}`), then one `done`
    event with finish_reason, usage and the applied steering (or an `error` event).
    """
    return respond(await get_service(request).generate.generate(body, request.is_disconnected))
