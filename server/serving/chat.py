"""Serving of `POST /v1/chat/completions`: answer the chat `n` times (the model's chat template)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

from pydantic import BaseModel

from server.errors import invalid
from server.protocol.chat import (
    ChatChoice,
    ChatChunkChoice,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChatCompletionResponse,
    ChatDelta,
    ChatMessageOut,
)
from server.serving.lifecycle import Disconnected
from server.serving.openai_base import Chunks, OpenAIServing, finish_reason
from server.serving.openai_logprobs import chat_logprobs


class ChatServing(OpenAIServing):
    """A /v1/chat/completions body to its answer: a `ChatCompletionResponse`, or the SSE chunks of a streamed one."""

    async def create(
        self, body: ChatCompletionRequest, is_disconnected: Disconnected
    ) -> ChatCompletionResponse | AsyncIterator[str]:
        steer, field = self.steering.resolve_model(body.model, body.steer)
        self.requests.check_top_logprobs("top_logprobs", body.top_logprobs)
        self.refuse_streamed(body, "logprobs", body.logprobs)
        self.lifecycle.check_room(self.requests.check_choices(1, body.n))
        max_tokens = body.max_completion_tokens if body.max_completion_tokens is not None else body.max_tokens
        if max_tokens == 0:
            raise invalid("max_tokens", "`max_tokens` must be >= 1 on /v1/chat/completions")
        top = body.top_logprobs if body.logprobs else None
        inputs = [self.to_input(body, steer, field, max_tokens, messages=body.chat, logprobs=top)]
        prepared = await asyncio.to_thread(self.requests.prepare_choices, inputs, body.n)
        handle = self.lifecycle.submit(prepared, stream=body.stream)
        if body.stream:
            chunks = ChatChunks(model=body.model, ident=f"chatcmpl-{uuid.uuid4().hex}")
            return self.stream(prepared, handle, chunks, body.include_usage)
        await self.lifecycle.wait(handle, is_disconnected)
        tokenizer = self.engine.tokenizer
        return ChatCompletionResponse(
            model=body.model,
            choices=[
                ChatChoice(
                    index=i,
                    message=ChatMessageOut(content=seq.text),
                    finish_reason=finish_reason(seq.finish_reason),
                    logprobs=chat_logprobs(tokenizer, seq) if body.logprobs else None,
                )
                for i, seq in enumerate(handle.seqs)
            ],
            usage=self.lifecycle.usage(prepared, handle),
            steer=prepared.applied,
        )


class ChatChunks(Chunks):
    """The SSE chunks of one streamed /v1/chat/completions answer (each choice opens with the assistant role)."""

    chunk_model = ChatCompletionChunk

    def opening(self, index: int) -> BaseModel:
        return self.chunk([ChatChunkChoice(index=index, delta=ChatDelta(role="assistant", content=""))])

    def delta(self, index: int, text: str) -> BaseModel:
        return self.chunk([ChatChunkChoice(index=index, delta=ChatDelta(content=text))])

    def finish(self, index: int, reason: str) -> BaseModel:
        return self.chunk([ChatChunkChoice(index=index, delta=ChatDelta(), finish_reason=reason)])
