"""Request lifecycle: queue a request's rows on the engine, wait for or stream its events, cancel it.

429 / 503 at admission, 504 past the deadline, a failed row's error for the whole request, cancellation when
the client goes away; what a finished request answers (`Outcome`, usage).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass

import torch

from server.engine.client import EngineClient, NotAccepting, QueueFull, SteeringUnavailable
from server.engine.request import Event, Request
from server.errors import ApiError
from server.metrics import Metrics
from server.protocol.common import AppliedVector, Usage
from server.serving.requests import Prepared
from server.settings import ServerSettings

Disconnected = Callable[[], Awaitable[bool]]  # the route's `request.is_disconnected`


@dataclass(frozen=True)
class Outcome:
    text: str
    finish_reason: str
    usage: Usage
    applied: list[AppliedVector]
    unsteered_text: str | None = None
    unsteered_finish_reason: str | None = None


class RequestLifecycle:
    """Submit, wait, stream, time out and cancel requests on the engine."""

    def __init__(self, engine: EngineClient, settings: ServerSettings, metrics: Metrics) -> None:
        self.engine = engine
        self.settings = settings
        self.metrics = metrics

    def check_room(self, rows: int) -> None:
        """Fail fast (429 / 503) before any work when a request of `rows` rows would be refused anyway."""
        with self._admission_errors():
            self.engine.check_room(rows)

    def submit(self, prepared: Prepared, *, stream: bool = True) -> Request:
        """Queue the rows; 429 when the queue is full, 503 while draining. Without `stream` the request gets
        one event per row, at its end (no per-token text on the engine thread, no per-token event-loop wake-up)."""
        with self._admission_errors():
            return self.engine.submit(prepared.seqs, stream=stream)

    @contextlib.contextmanager
    def _admission_errors(self) -> Iterator[None]:
        retry = {"Retry-After": str(self.settings.retry_after_s)}
        try:
            yield
        except QueueFull as exc:
            self.metrics.failures.labels(reason="overloaded").inc()
            raise ApiError(429, f"{exc}; retry later", type="overloaded", headers=retry) from None
        except NotAccepting as exc:
            raise ApiError(503, str(exc), type="unavailable", headers=retry) from None

    async def run(self, prepared: Prepared, is_disconnected: Disconnected) -> Outcome:
        """Queue, wait for the end (cancelling the rows if the client goes away or time runs out), summarise."""
        handle = self.submit(prepared, stream=False)
        await self.wait(handle, is_disconnected)
        return self.outcome(prepared, handle)

    async def wait(self, handle: Request, is_disconnected: Disconnected) -> None:
        """Until every row ended (or one failed: `ApiError`); rows are cancelled if the client goes away or
        time runs out."""
        waiter = asyncio.ensure_future(_settle(handle))
        deadline = self.deadline(handle)
        try:
            while not waiter.done():
                done, _ = await asyncio.wait({waiter}, timeout=_poll(deadline))
                if done:
                    break
                if deadline is not None and time.monotonic() >= deadline:
                    raise self.time_out(handle)
                if not handle.cancelled and await is_disconnected():
                    self.cancel(handle)
            await waiter
        except (asyncio.CancelledError, ApiError):
            self.cancel(handle)
            waiter.cancel()
            raise
        check(handle)

    async def events(self, handle: Request) -> AsyncIterator[Event]:
        """The events of a queued request (every row's deltas and end); the failure of any row, or the 504
        past the deadline, as an `ApiError` (the other rows are then already stopped)."""
        deadline = self.deadline(handle)
        stream = handle.stream()
        while True:
            try:
                if deadline is None:
                    event = await stream.__anext__()
                else:
                    left = max(0.0, deadline - time.monotonic())
                    event = await asyncio.wait_for(stream.__anext__(), left)
            except StopAsyncIteration:
                check(handle)
                return
            except asyncio.TimeoutError:
                raise self.time_out(handle) from None
            check(handle)
            yield event

    def deadline(self, handle: Request) -> float | None:
        """`time.monotonic()` by which the request must be done (None: no limit)."""
        limit = self.settings.request_timeout_s
        return handle.submitted + limit if limit > 0 else None

    def time_out(self, handle: Request) -> ApiError:
        """Stop the rows of a request that ran past the deadline; the 504 to answer with."""
        if not handle.cancelled:
            self.metrics.failures.labels(reason="timeout").inc()
            handle.cancel()
        limit = self.settings.request_timeout_s
        return ApiError(
            504,
            f"request did not finish within {limit:g} s (server limit STEER_REQUEST_TIMEOUT_S); "
            "ask for fewer tokens or retry later",
            type="timeout",
            headers={"Retry-After": str(self.settings.retry_after_s)},
        )

    def cancel(self, handle: Request) -> None:
        """Stop the rows of a request whose client went away."""
        if not handle.cancelled and not all(s.finished for s in handle.seqs):
            self.metrics.disconnects.inc()
        handle.cancel()

    @staticmethod
    def outcome(prepared: Prepared, handle: Request) -> Outcome:
        """Final result, or the ApiError of a failed row."""
        check(handle)
        main = handle.seqs[0]
        twin = handle.seqs[1] if len(handle.seqs) > 1 else None
        n = len(main.output_ids)
        return Outcome(
            text=main.text,
            finish_reason=main.finish_reason or "stop",
            usage=Usage(
                prompt_tokens=prepared.prompt_tokens,
                completion_tokens=n,
                total_tokens=prepared.prompt_tokens + n,
            ),
            applied=prepared.applied,
            unsteered_text=twin.text if twin is not None else None,
            unsteered_finish_reason=twin.finish_reason if twin is not None else None,
        )

    @staticmethod
    def usage(prepared: Prepared, handle: Request) -> Usage:
        """Usage of a request of several choices: each prompt once, the tokens of every choice."""
        completion = sum(len(s.output_ids) for s in handle.seqs)
        return Usage(
            prompt_tokens=prepared.prompt_tokens,
            completion_tokens=completion,
            total_tokens=prepared.prompt_tokens + completion,
        )


def check(handle: Request) -> None:
    """Raise the ApiError of a request whose row failed: a request answers whole or not at all."""
    if handle.error is not None:
        raise failure(handle.error)


async def _settle(handle: Request) -> None:
    """Until every row ended, or one failed (the output stage has then stopped the others)."""
    async for _ in handle.stream():
        pass


def _poll(deadline: float | None, every: float = 0.25) -> float:
    """Seconds to wait before the next disconnect / deadline check."""
    if deadline is None:
        return every
    return max(0.0, min(every, deadline - time.monotonic()))


def failure(error: BaseException | None) -> ApiError:
    """The ApiError for a row that failed inside the engine."""
    if isinstance(error, torch.OutOfMemoryError):
        return ApiError(503, "out of memory while generating; retry later", type="out_of_memory")
    if isinstance(error, SteeringUnavailable):
        return ApiError(409, str(error), type="steering_unavailable")
    if isinstance(error, NotAccepting):
        return ApiError(503, str(error), type="unavailable")
    name = type(error).__name__ if error is not None else "unknown"
    return ApiError(500, f"generation failed ({name})", type="internal_error")


@contextlib.asynccontextmanager
async def cancel_on_exit(lifecycle: RequestLifecycle, handle: Request) -> AsyncIterator[None]:
    """Cancel the rows when a stream ends early (client gone, error)."""
    try:
        yield
    finally:
        if not all(s.finished for s in handle.seqs):
            lifecycle.cancel(handle)
