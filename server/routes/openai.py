"""OpenAI-compatible routes: /v1/models, /v1/completions, /v1/chat/completions (streaming included).

Steering rides in the model id (`<base>:<vector>@<strength>`, for tools that can only pick a model) or as extra
body fields `steer` and `apply` (the `openai` client's `extra_body={"steer": {...}}`). A request has
prompts × `n` choices; each choice is its own batch row with the request's steering, choice i is row i, and the
rows are queued, admitted and cancelled together: a request answers whole (every choice) or with one error.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from fastapi import APIRouter
from fastapi import Request as HttpRequest
from fastapi.responses import StreamingResponse
from pydantic import BaseModel

from server.engine.request import Request
from server.errors import ApiError, error_payload, invalid
from server.jsonbody import StrictJsonRoute
from server.protocol.common import Usage
from server.protocol.openai import (
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
    ModelList,
    OpenAIBase,
)
from server.routes import get_service, get_state
from server.routes.generate import ERRORS
from server.serving import Service
from server.serving.lifecycle import cancel_on_exit
from server.serving.openai_logprobs import chat_logprobs, completion_logprobs
from server.serving.requests import SEED_SPAN, GenerationInput, Prepared
from server.sse import frame, sse_response

router = APIRouter(prefix="/v1", tags=["openai"], route_class=StrictJsonRoute)


@router.get("/models", response_model=ModelList)
async def models(request: HttpRequest) -> ModelList:
    """The base model and one steered id per catalog vector (`<base>:<vector>`, at its default strength)."""
    service = get_service(request)
    return ModelList(data=service.steering.model_cards(int(get_state(request).started)))


def _input(
    body: OpenAIBase,
    steer: dict[str, float],
    field: str,
    max_tokens: int | None,
    **prompt: Any,
) -> GenerationInput:
    return GenerationInput(
        steer=steer,
        steer_field=field,
        apply=body.apply,
        max_new_tokens=max_tokens,
        temperature=body.temperature,
        top_p=body.top_p,
        top_k=body.top_k,
        seed=None if body.seed is None else body.seed % SEED_SPAN,
        stop=body.stop,
        ignore_eos=body.ignore_eos,
        max_tokens_field="max_tokens",
        **{"prompt": None, "messages": None, **prompt},
    )


def _echoed(tokenizer: Any, prompt: str | list[int]) -> str:
    """The prompt as `echo` shows it: the text as sent, or token ids decoded (special tokens left out)."""
    return prompt if isinstance(prompt, str) else tokenizer.decode(prompt, skip_special_tokens=True)


def _finish(reason: str | None) -> str:
    return "length" if reason == "length" else "stop"


def _no_stream(body: OpenAIBase, field: str, asked: bool) -> None:
    if body.stream and asked:
        raise invalid(field, f"`{field}` with `stream: true` is not supported yet; ask without streaming")


@router.post("/completions", response_model=CompletionResponse, responses=ERRORS)
async def completions(
    body: CompletionRequest, request: HttpRequest
) -> CompletionResponse | StreamingResponse:
    """Continue each prompt `n` times (raw text, no chat template; token ids verbatim); choice `index` =
    prompt position × n + choice number. `echo` repeats the prompt (with its log-probs when `logprobs` is set)."""
    service = get_service(request)
    steer, field = service.steering.resolve_model(body.model, body.steer)
    service.requests.check_top_logprobs("logprobs", body.logprobs)
    _no_stream(body, "logprobs", body.logprobs is not None)
    _no_stream(body, "echo", body.echo)
    service.lifecycle.check_room(service.requests.check_choices(len(body.prompts), body.n))
    scoring = body.logprobs if body.echo else None
    inputs = [
        _input(
            body,
            steer,
            field,
            body.max_tokens,
            **({"prompt": p, "raw": True} if isinstance(p, str) else {"prompt_ids": p}),
            logprobs=body.logprobs,
            prompt_logprobs=scoring,
            echo=body.echo,
        )
        for p in body.prompts
    ]
    prepared = await asyncio.to_thread(service.requests.prepare_choices, inputs, body.n)
    handle = service.lifecycle.submit(prepared, stream=body.stream)
    if body.stream:
        chunks = CompletionChunks(model=body.model, ident=f"cmpl-{uuid.uuid4().hex}")
        return sse_response(_stream(service, prepared, handle, chunks, body.include_usage))
    await _run(service, handle, request)
    choices = await asyncio.to_thread(_completion_choices, service.engine.tokenizer, body, handle)
    return CompletionResponse(
        model=body.model,
        choices=choices,
        usage=service.lifecycle.usage(prepared, handle),
        steer=prepared.applied,
    )


def _completion_choices(tokenizer: Any, body: CompletionRequest, handle: Request) -> list[CompletionChoice]:
    """Every choice's text (after the echoed prompt) and log-probs (decoding them is CPU work: off the loop)."""
    choices = []
    for i, seq in enumerate(handle.seqs):
        shown = _echoed(tokenizer, body.prompts[i // body.n]) if body.echo else ""
        lps = completion_logprobs(tokenizer, seq, body.echo) if body.logprobs is not None else None
        choices.append(
            CompletionChoice(
                index=i, text=shown + seq.text, finish_reason=_finish(seq.finish_reason), logprobs=lps
            )
        )
    return choices


@router.post("/chat/completions", response_model=ChatCompletionResponse, responses=ERRORS)
async def chat_completions(
    body: ChatCompletionRequest, request: HttpRequest
) -> ChatCompletionResponse | StreamingResponse:
    """Answer the chat `n` times (the model's chat template)."""
    service = get_service(request)
    steer, field = service.steering.resolve_model(body.model, body.steer)
    service.requests.check_top_logprobs("top_logprobs", body.top_logprobs)
    _no_stream(body, "logprobs", body.logprobs)
    service.lifecycle.check_room(service.requests.check_choices(1, body.n))
    max_tokens = body.max_completion_tokens if body.max_completion_tokens is not None else body.max_tokens
    if max_tokens == 0:
        raise invalid("max_tokens", "`max_tokens` must be >= 1 on /v1/chat/completions")
    top = body.top_logprobs if body.logprobs else None
    inputs = [_input(body, steer, field, max_tokens, messages=body.chat, logprobs=top)]
    prepared = await asyncio.to_thread(service.requests.prepare_choices, inputs, body.n)
    handle = service.lifecycle.submit(prepared, stream=body.stream)
    if body.stream:
        chunks = ChatChunks(model=body.model, ident=f"chatcmpl-{uuid.uuid4().hex}")
        return sse_response(_stream(service, prepared, handle, chunks, body.include_usage))
    await _run(service, handle, request)
    tokenizer = service.engine.tokenizer
    return ChatCompletionResponse(
        model=body.model,
        choices=[
            ChatChoice(
                index=i,
                message=ChatMessageOut(content=seq.text),
                finish_reason=_finish(seq.finish_reason),
                logprobs=chat_logprobs(tokenizer, seq) if body.logprobs else None,
            )
            for i, seq in enumerate(handle.seqs)
        ],
        usage=service.lifecycle.usage(prepared, handle),
        steer=prepared.applied,
    )


async def _run(service: Service, handle: Request, request: HttpRequest) -> None:
    """Wait for every choice; the error of a failed one."""
    await service.lifecycle.wait(handle, request.is_disconnected)


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
    handle: Request,
    chunks: CompletionChunks | ChatChunks,
    include_usage: bool,
) -> AsyncIterator[str]:
    """OpenAI SSE: `data: {chunk}` per token chunk (its choice's `index`); once every choice ended, a chunk with
    each finish_reason, the usage of all choices if asked for, and one `data: [DONE]`.

    A failed choice (or the deadline) stops the other choices and ends the stream with an error event and
    `[DONE]`, never with a finish_reason: the text streamed so far is not an answer.
    """
    async with cancel_on_exit(service.lifecycle, handle):
        for index in range(len(handle.seqs)):
            opening = chunks.opening(index)
            if opening is not None:
                yield frame(opening)
        try:
            async for event in service.lifecycle.events(handle):
                if event.delta:
                    yield frame(chunks.delta(event.index, event.delta))
        except ApiError as exc:
            yield frame(error_payload(exc.status, exc.message, exc.type, exc.param))
            yield frame("[DONE]")
            return
        for index, seq in enumerate(handle.seqs):
            yield frame(chunks.finish(index, _finish(seq.finish_reason)))
        if include_usage:
            yield frame(chunks.usage(service.lifecycle.usage(prepared, handle), prepared))
        yield frame("[DONE]")
