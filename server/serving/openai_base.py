"""What the OpenAI serving objects share (vLLM's `OpenAIServing`): a protocol body to `GenerationInput`s, the
streamed answer as OpenAI chunks, and the finish reasons OpenAI clients know."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, ClassVar

from pydantic import BaseModel

from server.engine.client import EngineClient
from server.engine.request import Request
from server.errors import ApiError, error_payload, invalid
from server.protocol.common import Usage
from server.protocol.openai import OpenAIBase
from server.serving.lifecycle import RequestLifecycle, cancel_on_exit
from server.serving.requests import SEED_SPAN, GenerationInput, Prepared, RequestBuilder
from server.serving.steering import SteeringResolver
from server.sse import frame


@dataclass(frozen=True)
class Chunks:
    """The SSE chunks of one streamed answer (one id and `created` for all of them); an endpoint says what its
    chunk model is and how a choice's delta, opening and finish read in it."""

    model: str
    ident: str
    created: int = field(default_factory=lambda: int(time.time()))
    chunk_model: ClassVar[type[BaseModel]]

    def opening(self, index: int) -> BaseModel | None:
        return None

    def delta(self, index: int, text: str) -> BaseModel:
        raise NotImplementedError

    def finish(self, index: int, reason: str) -> BaseModel:
        raise NotImplementedError

    def usage(self, usage: Usage, prepared: Prepared) -> BaseModel:
        return self.chunk([], usage, prepared)

    def chunk(
        self, choices: list[Any], usage: Usage | None = None, prepared: Prepared | None = None
    ) -> BaseModel:
        steer = prepared.applied if prepared is not None else None
        return self.chunk_model(
            id=self.ident, created=self.created, model=self.model, choices=choices, usage=usage, steer=steer
        )


def finish_reason(reason: str | None) -> str:
    return "length" if reason == "length" else "stop"


class OpenAIServing:
    """The parts an OpenAI endpoint's serving object works with, and what those objects do alike."""

    def __init__(
        self,
        engine: EngineClient,
        steering: SteeringResolver,
        requests: RequestBuilder,
        lifecycle: RequestLifecycle,
    ) -> None:
        self.engine = engine
        self.steering = steering
        self.requests = requests
        self.lifecycle = lifecycle

    @staticmethod
    def to_input(
        body: OpenAIBase, steer: dict[str, float], field: str, max_tokens: int | None, **prompt: Any
    ) -> GenerationInput:
        """One prompt of `body` (`prompt`, `prompt_ids` or `messages` in `prompt`) with its sampling fields."""
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

    @staticmethod
    def refuse_streamed(body: OpenAIBase, field: str, asked: bool) -> None:
        if body.stream and asked:
            raise invalid(field, f"`{field}` with `stream: true` is not supported yet; ask without streaming")

    async def stream(
        self, prepared: Prepared, handle: Request, chunks: Chunks, include_usage: bool
    ) -> AsyncIterator[str]:
        """OpenAI SSE: `data: {chunk}` per token chunk (its choice's `index`); once every choice ended, a chunk
        with each finish_reason, the usage of all choices if asked for, and one `data: [DONE]`.

        A failed choice (or the deadline) stops the other choices and ends the stream with an error event and
        `[DONE]`, never with a finish_reason: the text streamed so far is not an answer.
        """
        async with cancel_on_exit(self.lifecycle, handle):
            for index in range(len(handle.seqs)):
                opening = chunks.opening(index)
                if opening is not None:
                    yield frame(opening)
            try:
                async for event in self.lifecycle.events(handle):
                    if event.delta:
                        yield frame(chunks.delta(event.index, event.delta))
            except ApiError as exc:
                yield frame(error_payload(exc.status, exc.message, exc.type, exc.param))
                yield frame("[DONE]")
                return
            for index, seq in enumerate(handle.seqs):
                yield frame(chunks.finish(index, finish_reason(seq.finish_reason)))
            if include_usage:
                yield frame(chunks.usage(self.lifecycle.usage(prepared, handle), prepared))
            yield frame("[DONE]")
