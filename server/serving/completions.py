"""Serving of `POST /v1/completions`: continue each prompt `n` times (raw text, no chat template; token ids
verbatim); choice `index` = prompt position × n + choice number. `echo` repeats the prompt (with its log-probs
when `logprobs` is set)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

from pydantic import BaseModel

from server.engine.request import Request
from server.protocol.completions import (
    CompletionChoice,
    CompletionChunk,
    CompletionRequest,
    CompletionResponse,
)
from server.serving.lifecycle import Disconnected
from server.serving.openai_base import Chunks, OpenAIServing, finish_reason
from server.serving.openai_logprobs import completion_logprobs


class CompletionServing(OpenAIServing):
    """A /v1/completions body to its answer: a `CompletionResponse`, or the SSE chunks of a streamed one."""

    async def create(
        self, body: CompletionRequest, is_disconnected: Disconnected
    ) -> CompletionResponse | AsyncIterator[str]:
        steer, field = self.steering.resolve_model(body.model, body.steer)
        self.requests.check_top_logprobs("logprobs", body.logprobs)
        self.refuse_streamed(body, "logprobs", body.logprobs is not None)
        self.refuse_streamed(body, "echo", body.echo)
        self.lifecycle.check_room(self.requests.check_choices(len(body.prompts), body.n))
        scoring = body.logprobs if body.echo else None
        inputs = [
            self.to_input(
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
        prepared = await asyncio.to_thread(self.requests.prepare_choices, inputs, body.n)
        handle = self.lifecycle.submit(prepared, stream=body.stream)
        if body.stream:
            chunks = CompletionChunks(model=body.model, ident=f"cmpl-{uuid.uuid4().hex}")
            return self.stream(prepared, handle, chunks, body.include_usage)
        await self.lifecycle.wait(handle, is_disconnected)
        choices = await asyncio.to_thread(self._choices, body, handle)
        return CompletionResponse(
            model=body.model,
            choices=choices,
            usage=self.lifecycle.usage(prepared, handle),
            steer=prepared.applied,
        )

    def _choices(self, body: CompletionRequest, handle: Request) -> list[CompletionChoice]:
        """Every choice's text (after the echoed prompt) and log-probs (decoding them is CPU work: off the loop)."""
        tokenizer = self.engine.tokenizer
        choices = []
        for i, seq in enumerate(handle.seqs):
            shown = _echoed(tokenizer, body.prompts[i // body.n]) if body.echo else ""
            lps = completion_logprobs(tokenizer, seq, body.echo) if body.logprobs is not None else None
            choices.append(
                CompletionChoice(
                    index=i,
                    text=shown + seq.text,
                    finish_reason=finish_reason(seq.finish_reason),
                    logprobs=lps,
                )
            )
        return choices


def _echoed(tokenizer: Any, prompt: str | list[int]) -> str:
    """The prompt as `echo` shows it: the text as sent, or token ids decoded (special tokens left out)."""
    return prompt if isinstance(prompt, str) else tokenizer.decode(prompt, skip_special_tokens=True)


class CompletionChunks(Chunks):
    """The SSE chunks of one streamed /v1/completions answer."""

    chunk_model = CompletionChunk

    def delta(self, index: int, text: str) -> BaseModel:
        return self.chunk([CompletionChoice(index=index, text=text, finish_reason=None)])

    def finish(self, index: int, reason: str) -> BaseModel:
        return self.chunk([CompletionChoice(index=index, text="", finish_reason=reason)])
