"""Serving of the native `POST /generate`: one prompt or chat, steered per request (and its unsteered twin with
`compare`), answered as JSON or as server-sent events."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from server.engine.client import EngineClient
from server.engine.request import Request
from server.errors import ApiError, error_payload
from server.protocol.generate import GenerateRequest, GenerateResponse, StreamDone, StreamToken
from server.serving.lifecycle import Disconnected, RequestLifecycle, cancel_on_exit
from server.serving.requests import GenerationInput, Prepared, RequestBuilder
from server.sse import frame


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


class GenerateServing:
    """A /generate body to its answer: a `GenerateResponse`, or the SSE events of a streamed one."""

    def __init__(self, engine: EngineClient, requests: RequestBuilder, lifecycle: RequestLifecycle) -> None:
        self.engine = engine
        self.requests = requests
        self.lifecycle = lifecycle

    async def generate(
        self, body: GenerateRequest, is_disconnected: Disconnected
    ) -> GenerateResponse | AsyncIterator[str]:
        """With `"stream": true`: `token` events (`{"text": ...}`), then one `done` event with finish_reason,
        usage and the applied steering (or an `error` event)."""
        self.lifecycle.check_room(2 if body.compare else 1)
        prepared = await asyncio.to_thread(self.requests.prepare, to_input(body))
        if body.stream:
            return self._events(prepared, self.lifecycle.submit(prepared))
        out = await self.lifecycle.run(prepared, is_disconnected)
        return GenerateResponse(
            text=out.text,
            finish_reason=out.finish_reason,  # type: ignore[arg-type]
            usage=out.usage,
            steer=out.applied,
            unsteered_text=out.unsteered_text,
            unsteered_finish_reason=out.unsteered_finish_reason,  # type: ignore[arg-type]
            model=self.engine.name,
        )

    async def _events(self, prepared: Prepared, handle: Request) -> AsyncIterator[str]:
        async with cancel_on_exit(self.lifecycle, handle):
            try:
                async for event in self.lifecycle.events(handle):
                    if event.delta:
                        # row 0 is the request; row 1 the unsteered twin of a `compare` request
                        kind = "token" if event.index == 0 else "unsteered_token"
                        yield frame(StreamToken(text=event.delta), kind)
                out = self.lifecycle.outcome(prepared, handle)
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
