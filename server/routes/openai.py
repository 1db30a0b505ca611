"""OpenAI-compatible routes: /v1/models, /v1/completions, /v1/chat/completions (streaming included).

`steer` and `apply` ride as extra body fields (the `openai` client's `extra_body={"steer": {...}}`).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Callable

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse

from server.errors import ApiError, error_payload
from server.jsonbody import StrictJsonRoute
from server.protocol import (
    ChatChoice,
    ChatChunkChoice,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChatCompletionResponse,
    ChatDelta,
    ChatMessageOut,
    CompletionChoice,
    CompletionChunk,
    CompletionRequest,
    CompletionResponse,
    ModelCard,
    ModelList,
    OpenAIBase,
)
from server.routes import get_service, get_state
from server.routes.generate import ERRORS
from server.scheduler import Handle
from server.serving import GenerationInput, Outcome, Prepared, Service, cancel_on_exit
from server.sse import frame, sse_response

router = APIRouter(prefix="/v1", tags=["openai"], route_class=StrictJsonRoute)


@router.get("/models", response_model=ModelList)
async def models(request: Request) -> ModelList:
    service = get_service(request)
    return ModelList(data=[ModelCard(id=service.engine.name, created=int(get_state(request).started))])


def _check_model(service: Service, body: OpenAIBase) -> None:
    if body.model != service.engine.name:
        raise ApiError(
            404,
            f"model {body.model!r} is not served here; this server serves {service.engine.name!r} (GET /v1/models)",
            type="model_not_found",
            param="model",
        )


def _input(
    body: OpenAIBase, prompt: str | None, messages: list | None, max_tokens: int | None
) -> GenerationInput:
    return GenerationInput(
        prompt=prompt,
        messages=messages,
        steer=body.steer,
        apply=body.apply,
        max_new_tokens=max_tokens,
        temperature=body.temperature,
        top_p=body.top_p,
        top_k=body.top_k,
        seed=body.seed,
        stop=body.stop,
        max_tokens_field="max_tokens",
    )


def _finish(reason: str) -> str:
    return "length" if reason == "length" else "stop"


@router.post("/completions", response_model=CompletionResponse, responses=ERRORS)
async def completions(body: CompletionRequest, request: Request) -> CompletionResponse | StreamingResponse:
    service = get_service(request)
    _check_model(service, body)
    service.check_room(1)
    prompt = body.prompt if isinstance(body.prompt, str) else body.prompt[0]
    prepared = await asyncio.to_thread(service.prepare, _input(body, prompt, None, body.max_tokens))
    if body.stream:
        ident, created = f"cmpl-{uuid.uuid4().hex}", int(time.time())

        def chunk(text: str | None, finish: str | None, usage: Outcome | None = None) -> CompletionChunk:
            choices = [] if usage is not None else [CompletionChoice(text=text or "", finish_reason=finish)]
            return CompletionChunk(
                id=ident,
                created=created,
                model=service.engine.name,
                choices=choices,
                usage=usage.usage if usage is not None else None,
                steer=usage.applied if usage is not None else None,
            )

        handle = service.submit(prepared)
        return sse_response(_stream(service, prepared, handle, chunk, body, first=None))
    out = await service.run(prepared, request.is_disconnected)
    return CompletionResponse(
        model=service.engine.name,
        choices=[CompletionChoice(text=out.text, finish_reason=_finish(out.finish_reason))],
        usage=out.usage,
        steer=out.applied,
    )


@router.post("/chat/completions", response_model=ChatCompletionResponse, responses=ERRORS)
async def chat_completions(
    body: ChatCompletionRequest, request: Request
) -> ChatCompletionResponse | StreamingResponse:
    service = get_service(request)
    _check_model(service, body)
    service.check_room(1)
    max_tokens = body.max_completion_tokens if body.max_completion_tokens is not None else body.max_tokens
    prepared = await asyncio.to_thread(service.prepare, _input(body, None, body.messages, max_tokens))
    if body.stream:
        ident, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())

        def chunk(text: str | None, finish: str | None, usage: Outcome | None = None) -> ChatCompletionChunk:
            if usage is not None:
                choices = []
            elif text is None and finish is None:
                choices = [ChatChunkChoice(delta=ChatDelta(role="assistant", content=""))]
            else:
                choices = [ChatChunkChoice(delta=ChatDelta(content=text), finish_reason=finish)]
            return ChatCompletionChunk(
                id=ident,
                created=created,
                model=service.engine.name,
                choices=choices,
                usage=usage.usage if usage is not None else None,
                steer=usage.applied if usage is not None else None,
            )

        handle = service.submit(prepared)
        return sse_response(_stream(service, prepared, handle, chunk, body, first=chunk(None, None)))
    out = await service.run(prepared, request.is_disconnected)
    return ChatCompletionResponse(
        model=service.engine.name,
        choices=[
            ChatChoice(message=ChatMessageOut(content=out.text), finish_reason=_finish(out.finish_reason))
        ],
        usage=out.usage,
        steer=out.applied,
    )


async def _stream(
    service: Service,
    prepared: Prepared,
    handle: Handle,
    chunk: Callable[..., object],
    body: OpenAIBase,
    first: object | None,
) -> AsyncIterator[str]:
    """OpenAI SSE: `data: {chunk}` per token chunk, a chunk with finish_reason, optional usage, `data: [DONE]`."""
    async with cancel_on_exit(service, handle):
        if first is not None:
            yield frame(first)  # type: ignore[arg-type]
        try:
            async for event in service.events(handle):
                if event.delta:
                    yield frame(chunk(event.delta, None))  # type: ignore[arg-type]
            out = service.outcome(prepared, handle)
        except ApiError as exc:
            yield frame(error_payload(exc.status, exc.message, exc.type, exc.param))
            yield frame("[DONE]")
            return
        yield frame(chunk(None, _finish(out.finish_reason)))  # type: ignore[arg-type]
        if body.stream_options is not None and body.stream_options.include_usage:
            yield frame(chunk(None, None, out))  # type: ignore[arg-type]
        yield frame("[DONE]")
