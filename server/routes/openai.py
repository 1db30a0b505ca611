"""OpenAI-compatible routes: /v1/models, /v1/completions, /v1/chat/completions (streaming included).

`steer` and `apply` ride as extra body fields (the `openai` client's `extra_body={"steer": {...}}`). A request has
prompts × `n` choices; each choice is its own batch row with the request's steering, choice i is row i, and the
rows are queued, admitted and cancelled together: a request answers whole (every choice) or with one error.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse
from pydantic import BaseModel

from server.errors import ApiError, error_payload
from server.jsonbody import StrictJsonRoute
from server.output import Handle
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
    Usage,
)
from server.routes import get_service, get_state
from server.routes.generate import ERRORS
from server.serving import GenerationInput, Prepared, Service, cancel_on_exit
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


def _finish(reason: str | None) -> str:
    return "length" if reason == "length" else "stop"


@router.post("/completions", response_model=CompletionResponse, responses=ERRORS)
async def completions(body: CompletionRequest, request: Request) -> CompletionResponse | StreamingResponse:
    """Complete each prompt `n` times; choice `index` = prompt position × n + choice number."""
    service = get_service(request)
    _check_model(service, body)
    service.check_room(service.check_choices(len(body.prompts), body.n))
    inputs = [_input(body, prompt, None, body.max_tokens) for prompt in body.prompts]
    prepared = await asyncio.to_thread(service.prepare_choices, inputs, body.n)
    handle = service.submit(prepared)
    if body.stream:
        chunks = CompletionChunks(model=service.engine.name, ident=f"cmpl-{uuid.uuid4().hex}")
        return sse_response(_stream(service, prepared, handle, chunks, _include_usage(body)))
    texts, usage = await _run(service, prepared, handle, request)
    return CompletionResponse(
        model=service.engine.name,
        choices=[CompletionChoice(index=i, text=t, finish_reason=f) for i, (t, f) in enumerate(texts)],
        usage=usage,
        steer=prepared.applied,
    )


@router.post("/chat/completions", response_model=ChatCompletionResponse, responses=ERRORS)
async def chat_completions(
    body: ChatCompletionRequest, request: Request
) -> ChatCompletionResponse | StreamingResponse:
    """Answer the chat `n` times."""
    service = get_service(request)
    _check_model(service, body)
    service.check_room(service.check_choices(1, body.n))
    max_tokens = body.max_completion_tokens if body.max_completion_tokens is not None else body.max_tokens
    inputs = [_input(body, None, body.messages, max_tokens)]
    prepared = await asyncio.to_thread(service.prepare_choices, inputs, body.n)
    handle = service.submit(prepared)
    if body.stream:
        chunks = ChatChunks(model=service.engine.name, ident=f"chatcmpl-{uuid.uuid4().hex}")
        return sse_response(_stream(service, prepared, handle, chunks, _include_usage(body)))
    texts, usage = await _run(service, prepared, handle, request)
    return ChatCompletionResponse(
        model=service.engine.name,
        choices=[
            ChatChoice(index=i, message=ChatMessageOut(content=t), finish_reason=f)
            for i, (t, f) in enumerate(texts)
        ],
        usage=usage,
        steer=prepared.applied,
    )


def _include_usage(body: OpenAIBase) -> bool:
    return body.stream_options is not None and body.stream_options.include_usage


async def _run(
    service: Service, prepared: Prepared, handle: Handle, request: Request
) -> tuple[list[tuple[str, str]], Usage]:
    """Wait for every choice: (text, finish_reason) per choice in order, and the summed usage; or the error."""
    await service.wait(handle, request.is_disconnected)
    return [(s.text, _finish(s.finish_reason)) for s in handle.seqs], service.usage(prepared, handle)


@dataclass(frozen=True)
class CompletionChunks:
    """The SSE chunks of one streamed /v1/completions answer (one id and `created` for all)."""

    model: str
    ident: str
    created: int = field(default_factory=lambda: int(time.time()))

    def opening(self, index: int) -> BaseModel | None:
        return None

    def delta(self, index: int, text: str) -> BaseModel:
        return self._chunk([CompletionChoice(index=index, text=text, finish_reason=None)])

    def finish(self, index: int, reason: str) -> BaseModel:
        return self._chunk([CompletionChoice(index=index, text="", finish_reason=reason)])

    def usage(self, usage: Usage, prepared: Prepared) -> BaseModel:
        return self._chunk([], usage, prepared)

    def _chunk(
        self, choices: list[CompletionChoice], usage: Usage | None = None, prepared: Prepared | None = None
    ) -> CompletionChunk:
        steer = prepared.applied if prepared is not None else None
        return CompletionChunk(
            id=self.ident, created=self.created, model=self.model, choices=choices, usage=usage, steer=steer
        )


@dataclass(frozen=True)
class ChatChunks:
    """The SSE chunks of one streamed /v1/chat/completions answer (one id and `created` for all)."""

    model: str
    ident: str
    created: int = field(default_factory=lambda: int(time.time()))

    def opening(self, index: int) -> BaseModel | None:
        return self._chunk([ChatChunkChoice(index=index, delta=ChatDelta(role="assistant", content=""))])

    def delta(self, index: int, text: str) -> BaseModel:
        return self._chunk([ChatChunkChoice(index=index, delta=ChatDelta(content=text))])

    def finish(self, index: int, reason: str) -> BaseModel:
        return self._chunk([ChatChunkChoice(index=index, delta=ChatDelta(), finish_reason=reason)])

    def usage(self, usage: Usage, prepared: Prepared) -> BaseModel:
        return self._chunk([], usage, prepared)

    def _chunk(
        self, choices: list[ChatChunkChoice], usage: Usage | None = None, prepared: Prepared | None = None
    ) -> ChatCompletionChunk:
        steer = prepared.applied if prepared is not None else None
        return ChatCompletionChunk(
            id=self.ident, created=self.created, model=self.model, choices=choices, usage=usage, steer=steer
        )


async def _stream(
    service: Service,
    prepared: Prepared,
    handle: Handle,
    chunks: CompletionChunks | ChatChunks,
    include_usage: bool,
) -> AsyncIterator[str]:
    """OpenAI SSE: `data: {chunk}` per token chunk (its choice's `index`); once every choice ended, a chunk with
    each finish_reason, the usage of all choices if asked for, and one `data: [DONE]`.

    A failed choice (or the deadline) stops the other choices and ends the stream with an error event and
    `[DONE]`, never with a finish_reason: the text streamed so far is not an answer.
    """
    async with cancel_on_exit(service, handle):
        for index in range(len(handle.seqs)):
            opening = chunks.opening(index)
            if opening is not None:
                yield frame(opening)
        try:
            async for event in service.events(handle):
                if event.delta:
                    yield frame(chunks.delta(event.index, event.delta))
        except ApiError as exc:
            yield frame(error_payload(exc.status, exc.message, exc.type, exc.param))
            yield frame("[DONE]")
            return
        for index, seq in enumerate(handle.seqs):
            yield frame(chunks.finish(index, _finish(seq.finish_reason)))
        if include_usage:
            yield frame(chunks.usage(service.usage(prepared, handle), prepared))
        yield frame("[DONE]")
