"""Scheduler: bounded admission queue, continuous batching in a worker thread, cancellation, draining.

The event loop only enqueues (`submit`) and reads events; all tensor work happens in one worker thread that
loops: admit waiting requests (row and steering-config caps; their rows prefill into free slots; once more for
those that arrived meanwhile) → one decode step for every running row (`server.engine.batcher`) → the output
stage hands events back through `loop.call_soon_threadsafe` into each request's `asyncio.Queue`. The scheduler
holds requests and rows, never tensors.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from dataclasses import dataclass

from server.engine.client import NotAccepting, QueueFull
from server.engine.model import LoadedModel
from server.engine.request import Request, Row
from server.metrics import Metrics

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SchedulerLimits:
    max_batch: int = 8
    max_queue: int = 64
    max_configs_per_batch: int = 4


class Scheduler:
    """Owns the worker thread that drives the engine."""

    def __init__(self, engine: LoadedModel, limits: SchedulerLimits, metrics: Metrics | None = None) -> None:
        self.engine = engine
        self.limits = limits
        self.metrics = metrics or Metrics()
        self.batcher = engine.batcher(self.metrics)
        self._waiting: deque[Request] = deque()
        self._running: dict[int, Request] = {}
        self._cond = threading.Condition()
        self._accepting = True
        self._stop = False
        self._thread: threading.Thread | None = None

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
        return len(self.batcher.rows)

    @property
    def busy_rows(self) -> int:
        """Rows of admitted requests, including those still in prefill (not yet in a slot)."""
        return sum(h.rows for h in list(self._running.values()))

    @property
    def in_flight(self) -> int:
        return len(self._waiting) + len(self._running)

    # --- event-loop side ------------------------------------------------------------------------------------
    def submit(self, seqs: list[Row], *, stream: bool = True) -> Request:
        """Queue a request (call from the event loop). Raises `NotAccepting` or `QueueFull`."""
        if len(seqs) > self.limits.max_batch:
            raise ValueError(f"request needs {len(seqs)} rows, max_batch is {self.limits.max_batch}")
        handle = Request(seqs=seqs, loop=asyncio.get_running_loop(), streaming=stream)
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

    # --- worker thread --------------------------------------------------------------------------------------
    def _run(self) -> None:
        turn = self.engine.turn
        held = False  # the engine's turn, held from the first admission until the slots are empty again
        try:
            while True:
                with self._cond:
                    while not self._stop and not self._waiting and not self.batcher.rows:
                        self._cond.wait(0.5)
                    if self._stop:
                        break
                if not held:
                    held = turn.acquire(timeout=0.5)
                    if not held:
                        continue  # another driver of this engine is busy; look at `_stop` again
                with self._cond:
                    admitted = self._admit()
                try:
                    self._iterate(admitted)
                except Exception:  # never let the worker die
                    log.exception("engine loop failed")
                if not self.batcher.rows:
                    turn.release()
                    held = False
        finally:
            self._fail_all(RuntimeError("server stopped"))  # rows are in slots only while the turn is held
            if held:
                turn.release()

    def _admit(self) -> list[Request]:
        """Move waiting requests into the batch while rows and steering configs allow (holding the lock)."""
        rows = self.busy_rows
        configs = {s.steer.key for s in self.batcher.rows if s.steer.steered}
        admitted: list[Request] = []
        kept: deque[Request] = deque()
        while self._waiting:
            h = self._waiting.popleft()
            if h.cancelled:
                for s in h.seqs:
                    self.batcher.output.finish(s, "cancelled")
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

    def _iterate(self, admitted: list[Request]) -> None:
        """Prefill the admitted requests, then decode every running row once.

        Requests that arrived during that prefill are admitted and prefilled before the step too (one more round,
        not more, so a stream of arrivals cannot hold back the running rows' tokens for long): a burst whose
        first request found the engine idle then costs two prefills and one step for everyone, not a step for
        the first request alone between the two prefills.
        """
        batcher = self.batcher
        batcher.drop_cancelled()
        if admitted:
            self._prefill(admitted)
            with self._cond:
                again = self._admit()
            if again:
                self._prefill(again)
        batcher.step()
        for h in [h for h in self._running.values() if h.done]:
            self._running.pop(h.id, None)
        self.metrics.running.set(self.running_rows)

    def _prefill(self, admitted: list[Request]) -> None:
        for h in admitted:
            assert h.admitted is not None
            self.metrics.queue_time.observe(h.admitted - h.submitted)
            self.metrics.prompt_tokens.inc(sum(len(s.prompt_ids) for s in h.seqs))
        self.batcher.add([s for h in admitted for s in h.seqs])

    def _fail_all(self, exc: BaseException) -> None:
        with self._cond:
            handles = list(self._waiting) + list(self._running.values())
            self._waiting.clear()
        self.batcher.fail_all(exc, reason="cancelled")
        for h in handles:
            for s in h.seqs:
                self.batcher.output.finish(s, "cancelled", exc)
            self._running.pop(h.id, None)
