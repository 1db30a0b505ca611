"""Scheduler: bounded admission queue, continuous batching in a worker thread, cancellation, draining.

The event loop only enqueues (`submit`) and reads events; all tensor work happens in one worker thread that
loops: drop cancelled rows → admit waiting requests (row and steering-config caps) → prefill them → join
them to the running batch → one decode step for every row. Events travel back through
`loop.call_soon_threadsafe` into a per-request `asyncio.Queue`.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import threading
import time
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import torch

from server.engine import Batch, Engine
from server.metrics import Metrics
from server.sequence import Sequence

log = logging.getLogger(__name__)


class QueueFull(Exception):
    """The waiting queue is at its limit (→ 429)."""


class NotAccepting(Exception):
    """The server is draining or stopped (→ 503)."""


@dataclass(frozen=True)
class SchedulerLimits:
    max_batch: int = 8
    max_queue: int = 64
    max_configs_per_batch: int = 4


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
    events: asyncio.Queue[Event] = field(default_factory=asyncio.Queue)
    _open: int = 0

    def __post_init__(self) -> None:
        self._open = len(self.seqs)

    @property
    def rows(self) -> int:
        return len(self.seqs)

    @property
    def configs(self) -> set[Any]:
        return {s.steer.key for s in self.seqs if s.steer.steered}

    def cancel(self) -> None:
        """Stop every row at the next step (client gone)."""
        for s in self.seqs:
            s.cancel()

    @property
    def cancelled(self) -> bool:
        return any(s.cancelled for s in self.seqs)

    async def stream(self) -> AsyncIterator[Event]:
        """Events until every row is done."""
        while self._open:
            event = await self.events.get()
            if event.done:
                self._open -= 1
            yield event

    async def wait(self) -> list[Sequence]:
        """Wait for every row to finish."""
        async for _ in self.stream():
            pass
        return self.seqs


class Scheduler:
    """Owns the worker thread that drives the engine."""

    def __init__(self, engine: Engine, limits: SchedulerLimits, metrics: Metrics | None = None) -> None:
        self.engine = engine
        self.limits = limits
        self.metrics = metrics or Metrics()
        self._waiting: deque[Handle] = deque()
        self._running: dict[int, Handle] = {}
        self._cond = threading.Condition()
        self._accepting = True
        self._stop = False
        self._thread: threading.Thread | None = None
        self._batch: Batch | None = None

    # --- lifecycle ------------------------------------------------------------------------------------------
    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="steer-engine", daemon=True)
        self._thread.start()

    def stop_admitting(self) -> None:
        self._accepting = False

    @property
    def accepting(self) -> bool:
        return self._accepting

    async def drain(self, timeout: float) -> bool:
        """Stop admitting and wait for in-flight requests; True if all finished in time."""
        self.stop_admitting()
        deadline = time.monotonic() + timeout
        while self.in_flight and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        return self.in_flight == 0

    def shutdown(self, timeout: float = 5.0) -> None:
        """Stop the worker: unfinished rows are cancelled."""
        self._accepting = False
        with self._cond:
            self._stop = True
            for h in list(self._waiting) + list(self._running.values()):
                h.cancel()
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)

    # --- state ----------------------------------------------------------------------------------------------
    @property
    def queue_depth(self) -> int:
        return len(self._waiting)

    @property
    def running_rows(self) -> int:
        batch = self._batch
        return len(batch) if batch is not None else 0

    @property
    def busy_rows(self) -> int:
        """Rows of admitted requests, including those still in prefill (not yet in the batch)."""
        return sum(h.rows for h in list(self._running.values()))

    @property
    def in_flight(self) -> int:
        return len(self._waiting) + len(self._running)

    # --- event-loop side ------------------------------------------------------------------------------------
    def submit(self, seqs: list[Sequence]) -> Handle:
        """Queue a request (call from the event loop). Raises `NotAccepting` or `QueueFull`."""
        if len(seqs) > self.limits.max_batch:
            raise ValueError(f"request needs {len(seqs)} rows, max_batch is {self.limits.max_batch}")
        handle = Handle(seqs=seqs, loop=asyncio.get_running_loop())
        for index, s in enumerate(seqs):
            s.on_update = self._listener(handle, index)
        with self._cond:
            self.check_room(len(seqs))
            self._waiting.append(handle)
            self.metrics.queue_depth.set(len(self._waiting))
            self._cond.notify_all()
        return handle

    def check_room(self, rows: int) -> None:
        """Raise `NotAccepting` / `QueueFull` if a request of `rows` rows would be refused now.

        Cheap and lock-free when called alone (the routes call it before tokenizing, so that an overloaded
        server answers 429 without a trip through the thread pool); `submit` repeats it under the lock.
        """
        if not self._accepting:
            raise NotAccepting("server is shutting down")
        # Requests that free batch rows will take at the next step do not count against the queue
        # (admission is first come, first served: after the first that does not fit, all are queued).
        free = self.limits.max_batch - self.busy_rows
        queued = 0
        for h in list(self._waiting):
            if queued == 0 and h.rows <= free:
                free -= h.rows
            else:
                queued += 1
        if (queued or rows > free) and queued >= self.limits.max_queue:
            raise QueueFull(f"queue is full ({self.limits.max_queue} waiting)")

    def _listener(self, handle: Handle, index: int) -> Any:
        counted = 0

        def on_update(seq: Sequence, delta: str) -> None:
            nonlocal counted
            now = time.monotonic()
            if len(seq.output_ids) > counted:
                self.metrics.generation_tokens.inc(len(seq.output_ids) - counted)
                counted = len(seq.output_ids)
                if handle.first_token is None:  # the request's first token, whichever row made it
                    handle.first_token = now
                    self.metrics.ttft.observe(now - handle.submitted)
            if seq.finished:
                self._finished_row(handle, seq, now)
            with contextlib.suppress(RuntimeError):  # the event loop is gone (shutdown)
                handle.loop.call_soon_threadsafe(handle.events.put_nowait, Event(index, delta, seq.finished))

        return on_update

    def _finished_row(self, handle: Handle, seq: Sequence, now: float) -> None:
        if seq.finish_reason == "error":
            reason = "oom" if isinstance(seq.error, torch.OutOfMemoryError) else "error"
            self.metrics.failures.labels(reason=reason).inc()
        elif seq.finish_reason == "cancelled":
            self.metrics.failures.labels(reason="cancelled").inc()
        if seq is handle.seqs[0]:
            n = len(seq.output_ids)
            if handle.first_token is not None and n > 1:
                self.metrics.tpot.observe((now - handle.first_token) / (n - 1))
        if all(s.finished for s in handle.seqs):  # a request ends with its last row (compare, n choices)
            self.metrics.e2e.observe(now - handle.submitted)
            self._running.pop(handle.id, None)

    # --- worker thread --------------------------------------------------------------------------------------
    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._stop and not self._waiting and self._batch is None:
                    self._cond.wait(0.5)
                if self._stop:
                    break
                admitted = self._admit()
            try:
                self._iterate(admitted)
            except Exception:  # never let the worker die
                log.exception("engine loop failed")
        self._fail_all(RuntimeError("server stopped"), reason="cancelled")

    def _admit(self) -> list[Handle]:
        """Move waiting requests into the batch while rows and steering configs allow (holding the lock)."""
        batch = self._batch
        rows = len(batch) if batch is not None else 0
        configs = {s.steer.key for s in batch.seqs if s.steer.steered} if batch is not None else set()
        admitted: list[Handle] = []
        kept: deque[Handle] = deque()
        while self._waiting:
            h = self._waiting.popleft()
            if h.cancelled:
                for s in h.seqs:
                    s.finish("cancelled")
                continue
            if rows + h.rows > self.limits.max_batch:
                kept.append(h)
                kept.extend(self._waiting)
                self._waiting.clear()
                break
            if len(configs | h.configs) > self.limits.max_configs_per_batch:
                kept.append(h)  # waits for a config slot; later requests may still fit
                continue
            rows += h.rows
            configs |= h.configs
            h.admitted = time.monotonic()
            self._running[h.id] = h
            admitted.append(h)
        self._waiting = kept
        self.metrics.queue_depth.set(len(self._waiting))
        return admitted

    def _iterate(self, admitted: list[Handle]) -> None:
        engine = self.engine
        self._batch = engine.drop_cancelled(self._batch)
        if admitted:
            for h in admitted:
                assert h.admitted is not None
                self.metrics.queue_time.observe(h.admitted - h.submitted)
                self.metrics.prompt_tokens.inc(sum(len(s.prompt_ids) for s in h.seqs))
            new = self._prefill([s for h in admitted for s in h.seqs])
            self._batch = engine.join(self._batch, new)
        if self._batch is not None:
            batch = self._batch
            self.metrics.batch_size.observe(len(batch))
            self.metrics.batch_configs.observe(len({s.steer.key for s in batch.seqs if s.steer.steered}))
            try:
                self._batch = engine.step(batch)
            except Exception as exc:
                self._batch = self._rescue(batch.seqs, exc)
        self.metrics.running.set(self.running_rows)

    def _prefill(self, seqs: list[Sequence]) -> Batch | None:
        """Prefill new rows together; if that fails, one by one so that only the culprit fails."""
        try:
            return self.engine.prefill(seqs)
        except Exception as exc:
            if len(seqs) == 1:
                log.warning("prefill failed: %s", exc)
                self._fail(seqs, exc)
                return None
            self._recover(exc)
        batch = None
        for s in seqs:
            batch = self.engine.join(batch, self._prefill([s]))
        return batch

    def _rescue(self, seqs: list[Sequence], exc: Exception) -> Batch | None:
        """After a failed decode step, rebuild each row alone and retry its step: only rows that fail alone fail.

        The failed step left the shared cache half-updated, so each row is re-prefilled from its own tokens
        (`Engine.resume`). A row is rescued once; caught in a second failed step it fails with that error, which
        bounds the cost of a failure that is no row's own (say, out of memory at this batch size).
        """
        log.error("decode step failed; retrying its %d rows one by one", len(seqs), exc_info=exc)
        self.metrics.step_failures.inc()
        self._recover(exc)
        batch = None
        for s in seqs:
            if s.finished:
                continue
            if s.cancelled:
                s.finish("cancelled")
            elif s.rescued:
                self._fail([s], exc)
            else:
                s.rescued = True
                batch = self.engine.join(batch, self._retry_alone(s))
        return batch

    def _retry_alone(self, seq: Sequence) -> Batch | None:
        """Resume one row from its tokens and run its step alone; on failure the row fails (it is the culprit)."""
        try:
            batch = self.engine.step(self.engine.resume(seq))
        except Exception as exc:
            log.warning("row failed again on its own: %s", exc)
            self._fail([seq], exc)
            return None
        self.metrics.rescued.inc()
        return batch

    def _fail(self, seqs: list[Sequence], exc: BaseException) -> None:
        self._recover(exc)
        for s in seqs:
            s.finish("error", exc)

    @staticmethod
    def _recover(exc: BaseException) -> None:
        if isinstance(exc, torch.OutOfMemoryError) and torch.cuda.is_available():
            with contextlib.suppress(Exception):
                torch.cuda.empty_cache()

    def _fail_all(self, exc: BaseException, reason: str) -> None:
        with self._cond:
            handles = list(self._waiting) + list(self._running.values())
            self._waiting.clear()
        for h in handles:
            for s in h.seqs:
                s.finish("cancelled" if reason == "cancelled" else "error", exc)
        self._batch = None
