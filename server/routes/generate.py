"""POST /generate: the native endpoint (steer, apply, compare; JSON or server-sent events)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from fastapi import APIRouter
from fastapi import Request as HttpRequest
from fastapi.responses import StreamingResponse

from server.engine.request import Request
from server.errors import ApiError, error_payload
from server.jsonbody import StrictJsonRoute
from server.protocol.common import ErrorResponse
from server.protocol.generate import GenerateRequest, GenerateResponse, StreamDone, StreamToken
from server.routes import get_service
from server.serving import Service
from server.serving.lifecycle import cancel_on_exit
from server.serving.requests import GenerationInput, Prepared
from server.sse import frame, sse_response

router = APIRouter(tags=["generate"], route_class=StrictJsonRoute)

ERRORS = {code: {"model": ErrorResponse} for code in (401, 413, 422, 429, 500, 503, 504)}


def to_input(body: GenerateRequest) -> GenerationInput:
    return GenerationInput(
        prompt=body.prompt,
        messages=body.messages,
        steer=body.steer,
        apply=body.apply,
        max_new_tokens=body.max_new_tokens,
        temperature=body.temperature,
        top_p=body.top_p,
        top_k=body.top_k,
        seed=body.seed,
        stop=body.stop,
        compare=body.compare,
        ignore_eos=body.ignore_eos,
    )


@router.post("/generate", response_model=GenerateResponse, responses=ERRORS)
async def generate(body: GenerateRequest, request: HttpRequest) -> GenerateResponse | StreamingResponse:
    """Generate text for one prompt or chat, steered per request.

    With `"stream": true` the answer is server-sent events: `token` events (`{"text": ...}`), then one `done`
    event with finish_reason, usage and the applied steering (or an `error` event).
    """
    service = get_service(request)
    service.lifecycle.check_room(2 if body.compare else 1)
    prepared = await asyncio.to_thread(service.requests.prepare, to_input(body))
    if body.stream:
        handle = service.lifecycle.submit(prepared)
        return sse_response(_events(service, prepared, handle))
    out = await service.lifecycle.run(prepared, request.is_disconnected)
    return GenerateResponse(
        text=out.text,
        finish_reason=out.finish_reason,  # type: ignore[arg-type]
        usage=out.usage,
        steer=out.applied,
        unsteered_text=out.unsteered_text,
        unsteered_finish_reason=out.unsteered_finish_reason,  # type: ignore[arg-type]
        model=service.engine.name,
    )


async def _events(service: Service, prepared: Prepared, handle: Request) -> AsyncIterator[str]:
    async with cancel_on_exit(service.lifecycle, handle):
        try:
            async for event in service.lifecycle.events(handle):
                if event.delta:
                    # row 0 is the request; row 1 the unsteered twin of a `compare` request
                    yield frame(
                        StreamToken(text=event.delta), "token" if event.index == 0 else "unsteered_token"
                    )
            out = service.lifecycle.outcome(prepared, handle)
        except ApiError as exc:
            yield frame(error_payload(exc.status, exc.message, exc.type, exc.param), "error")
            return
        done = StreamDone(
            finish_reason=out.finish_reason,  # type: ignore[arg-type]
            usage=out.usage,
            steer=out.applied,
            unsteered_text=out.unsteered_text,
        )
        yield frame(done, "done")
