"""The output stage: tokens in, text and events out (schedule → run → **postprocess**).

For every token the runner produced it appends the id, decodes the text, applies stop strings (holding back
text that could still become one, or an incomplete UTF-8 character, so a stream never shows what the final
answer drops), ends rows, counts metrics and hands events to the request's event loop. It is also the one place
of the rule "a failed row fails its whole request": the request records the error and its other rows stop.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import torch

from server.logprobs import TokenLogprob
from server.metrics import Metrics
from server.sequence import FinishReason, Sequence


@dataclass(frozen=True)
class Event:
    """A token chunk of row `index` (`delta`), or that row's end (`done`)."""

    index: int
    delta: str = ""
    done: bool = False


_ids = itertools.count(1)


@dataclass(eq=False)
class Handle:
    """One submitted request: its rows (the steered one first; an unsteered twin for compare)."""

    seqs: list[Sequence]
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

    async def wait(self) -> list[Sequence]:
        """Until the stream ends (every row done, or the request failed)."""
        async for _ in self.stream():
            pass
        return self.seqs


class OutputStage:
    """Detokenize, stop, finish, emit, count. Runs on the engine thread, after each forward."""

    def __init__(self, tokenizer: Any, eos_ids: frozenset[int], metrics: Metrics | None = None) -> None:
        self.tokenizer = tokenizer
        self.eos_ids = eos_ids
        self.metrics = metrics

    def token(self, seq: Sequence, token: int, logprob: TokenLogprob | None) -> None:
        """Record a generated token, update text and finish state, emit the new text."""
        seq.output_ids.append(token)
        if logprob is not None:
            seq.output_logprobs.append(logprob)
        live = (
            seq.owner is None or seq.owner.streaming or bool(seq.sampling.stop)
        )  # text needed at every token
        if token in self.eos_ids:
            seq.finish_reason = "stop"
        elif live:
            self._decode(seq, seq.output_ids)
        if not seq.finished and len(seq.output_ids) >= seq.sampling.max_new_tokens:
            seq.finish_reason = "length"
        if seq.finished and not live:
            self._decode(seq, seq.output_ids[:-1] if seq.output_ids[-1] in self.eos_ids else seq.output_ids)
        self._count_token(seq)
        if live or seq.finished:
            self._emit(seq)

    def _decode(self, seq: Sequence, ids: list[int]) -> None:
        """The row's text so far, cut at the first stop string (which then ends the row)."""
        full = self.tokenizer.decode(ids, skip_special_tokens=True)
        cut = _first_stop(full, seq.sampling.stop)
        seq.text = full if cut is None else full[:cut]
        if cut is not None:
            seq.finish_reason = "stop"

    def finish(self, seq: Sequence, reason: FinishReason, error: BaseException | None = None) -> None:
        """End a row from outside the token path: scored only ("length"), cancelled, or failed."""
        if seq.finished:
            return
        seq.finish_reason, seq.error = reason, error
        handle = seq.owner
        if reason == "error" and handle is not None and handle.error is None:
            handle.error = error or RuntimeError("generation failed")
            handle.cancel()  # the other rows' answers are void
        self._emit(seq)

    def _emit(self, seq: Sequence) -> None:
        if seq.finished:
            self._count_end(seq)
        safe = seq.text if seq.finished else _holdback(seq.text, seq.sampling.stop)
        delta = ""
        if safe.startswith(seq.emitted):
            delta = safe[len(seq.emitted) :]
            seq.emitted = safe
        if seq.owner is not None:
            seq.owner.emit(Event(seq.index, delta, seq.finished))

    # --- metrics ------------------------------------------------------------------------------------------
    def _count_token(self, seq: Sequence) -> None:
        m, handle = self.metrics, seq.owner
        if m is None:
            return
        m.generation_tokens.inc()
        if handle is not None and handle.first_token is None:  # the request's first token, whichever row
            handle.first_token = time.monotonic()
            m.ttft.observe(handle.first_token - handle.submitted)

    def _count_end(self, seq: Sequence) -> None:
        m, handle = self.metrics, seq.owner
        if m is None:
            return
        if seq.finish_reason == "error":
            reason = "oom" if isinstance(seq.error, torch.OutOfMemoryError) else "error"
            m.failures.labels(reason=reason).inc()
        elif seq.finish_reason == "cancelled":
            m.failures.labels(reason="cancelled").inc()
        if handle is None:
            return
        now = time.monotonic()
        n = len(seq.output_ids)
        if seq is handle.seqs[0] and handle.first_token is not None and n > 1:
            m.tpot.observe((now - handle.first_token) / (n - 1))
        if handle.done:  # a request ends with its last row (compare, n choices)
            m.e2e.observe(now - handle.submitted)


def _first_stop(text: str, stops: tuple[str, ...]) -> int | None:
    hits = [i for i in (text.find(s) for s in stops if s) if i >= 0]
    return min(hits) if hits else None


def _holdback(text: str, stops: tuple[str, ...]) -> str:
    """`text` minus a trailing partial character or a suffix that may grow into a stop string."""
    end = len(text)
    while end > 0 and text[end - 1] == "\ufffd":
        end -= 1
    text = text[:end]
    for stop in stops:
        for n in range(min(len(stop) - 1, len(text)), 0, -1):
            if text.endswith(stop[:n]):
                end = min(end, len(text) - n)
                break
    return text[:end]
