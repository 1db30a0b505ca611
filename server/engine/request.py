"""What the engine serves: a `Request` of one or more `Row`s, each row's steering (`SteerSpec`), and the
`Event`s a request streams back.

Pure data, no tensors: the scheduler gives a row a slot, the runner computes its tokens, the output stage
(`server.engine.output`) appends them, decodes the text, ends the row and emits the request's events. A row
points at its request (`Row.owner`) so that the output stage can fail a request whole.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import threading
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from server.engine.logprobs import TokenLogprob
from server.engine.sampling import SamplingParams
from vectors.metadata import ApplyPhase
from vectors.vector import SteeringVector

FinishReason = Literal["stop", "length", "cancelled", "error"]


@dataclass(frozen=True)
class SteerSpec:
    """The steering of one row: (vector, strength) pairs. Vectors are resolved once, at admission."""

    pairs: tuple[tuple[SteeringVector, float], ...] = ()
    apply: ApplyPhase | None = None  # per-request override of every vector's own apply phase

    @property
    def key(self) -> tuple[object, ...]:
        """Identity of the config: rows with equal keys share the same steering contents."""
        pairs = tuple(
            sorted((v.layer, v.fingerprint, self.apply or v.meta.apply, float(s)) for v, s in self.pairs)
        )
        return (pairs,)

    @property
    def steered(self) -> bool:
        return bool(self.pairs)

    def as_config(self) -> Mapping[SteeringVector, float]:
        return dict(self.pairs)


UNSTEERED = SteerSpec()


class Row:
    """A row of the batch. `cancel()` may be called from any thread; everything else from the engine thread."""

    def __init__(
        self,
        prompt_ids: list[int],
        sampling: SamplingParams,
        steer: SteerSpec = UNSTEERED,
    ) -> None:
        if not prompt_ids:
            raise ValueError("a sequence needs at least one prompt token")
        self.prompt_ids = list(prompt_ids)
        self.sampling = sampling
        self.steer = steer
        self.seed = sampling.draw_seed()
        self.rescued = False  # retried alone once after a failed decode step
        self.slot: int | None = None
        self.owner: Request | None = None  # the request this row belongs to (set by the scheduler)
        self.index = 0  # its row number in that request
        self.output_ids: list[int] = []
        self.output_logprobs: list[TokenLogprob] = []  # one per generated token when sampling.logprobs is set
        self.prompt_logprobs: list[
            TokenLogprob | None
        ] = []  # the prompt's, when sampling.prompt_logprobs is set
        self.text = ""
        self.emitted = ""
        self.finish_reason: FinishReason | None = None
        self.error: BaseException | None = None
        self._cancel = threading.Event()

    def cancel(self) -> None:
        """Ask the engine to stop this row at the next step."""
        self._cancel.set()

    @property
    def cancelled(self) -> bool:
        return self._cancel.is_set()

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None


@dataclass(frozen=True)
class Event:
    """A token chunk of row `index` (`delta`), or that row's end (`done`)."""

    index: int
    delta: str = ""
    done: bool = False


_ids = itertools.count(1)


@dataclass(eq=False)
class Request:
    """One submitted request: its rows (the steered one first; an unsteered twin for compare)."""

    seqs: list[Row]
    loop: asyncio.AbstractEventLoop
    id: int = field(default_factory=lambda: next(_ids))
    submitted: float = field(default_factory=time.monotonic)
    admitted: float | None = None
    first_token: float | None = None
    error: BaseException | None = None  # the first failure of any row: the request fails whole
    streaming: bool = True  # False: one event per row, at its end
    events: asyncio.Queue[Event] = field(default_factory=asyncio.Queue)
    _open: int = 0

    def __post_init__(self) -> None:
        self._open = len(self.seqs)
        for index, s in enumerate(self.seqs):
            s.owner, s.index = self, index

    @property
    def rows(self) -> int:
        return len(self.seqs)

    @property
    def configs(self) -> set[Any]:
        return {s.steer.key for s in self.seqs if s.steer.steered}

    @property
    def done(self) -> bool:
        return all(s.finished for s in self.seqs)

    def cancel(self) -> None:
        """Stop every row at the next step (client gone, or a sibling failed)."""
        for s in self.seqs:
            s.cancel()

    @property
    def cancelled(self) -> bool:
        return any(s.cancelled for s in self.seqs)

    def emit(self, event: Event) -> None:
        """Hand `event` to the request's event loop (from the engine thread)."""
        with contextlib.suppress(RuntimeError):  # the event loop is gone (shutdown)
            self.loop.call_soon_threadsafe(self.events.put_nowait, event)

    async def stream(self) -> AsyncIterator[Event]:
        """Events until every row is done (or, after a failure, until the failing row's end)."""
        while self._open:
            event = await self.events.get()
            if event.done:
                self._open -= 1
            yield event
            if self.error is not None:
                return

    async def wait(self) -> list[Row]:
        """Until the stream ends (every row done, or the request failed)."""
        async for _ in self.stream():
            pass
        return self.seqs
