"""Continuous batching over slots: which row runs where, and one iteration of schedule → run → postprocess.

Running rows occupy slots 0..n-1 (row i in slot i). New rows prefill into the next free slots; a decode step
runs slots [0, n); a row that ends frees its slot and the last row moves into the hole (one slot's copy), so
the running slots stay consecutive. Failures stay with their rows: a prefill that fails is retried row by row,
and a failed decode step is retried for each row alone (its cache writes at the same positions are simply
redone), so only a row that fails again alone fails.

Synchronous and single-threaded: `server.engine.scheduler` drives it from its worker thread; `LoadedModel.generate` drives
it directly (tests, warm-up).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch

from server.engine.output import OutputStage
from server.engine.request import Row
from server.engine.runner import ModelRunner
from server.engine.runner_io import NewRow, StepOutput
from server.engine.steering import SteeringTable

if TYPE_CHECKING:
    from server.metrics import Metrics

log = logging.getLogger(__name__)


class Batcher:
    """The rows in the engine's slots, and the step that advances them all."""

    def __init__(
        self,
        runner: ModelRunner,
        steering: SteeringTable,
        output: OutputStage,
        metrics: Metrics | None = None,
    ) -> None:
        self.runner = runner
        self.steering = steering
        self.output = output
        self.metrics = metrics
        self.rows: list[Row] = []  # rows[i] holds slot i

    @property
    def free(self) -> int:
        return self.runner.slots - len(self.rows)

    # --- schedule + run ---------------------------------------------------------------------------------
    def add(self, seqs: list[Row]) -> None:
        """Prefill new rows together into free slots; if that fails, one by one so that only the culprit fails."""
        if len(seqs) > self.free:
            raise ValueError(f"{len(seqs)} rows do not fit in {self.free} free slots")
        try:
            self._prefill(seqs)
        except Exception as exc:
            if len(seqs) == 1:
                log.warning("prefill failed: %s", exc)
                self._fail(seqs, exc)
                return
            _recover(exc)
            for s in seqs:
                self.add([s])

    def _prefill(self, seqs: list[Row]) -> None:
        start = len(self.rows)
        new = [NewRow(s.prompt_ids, s.sampling, s.seed, self.steering.rows(s.steer)) for s in seqs]
        try:
            out = self.runner.prefill(start, new)
        except Exception:
            for i in range(len(seqs)):
                self.runner.free(start + i)
            raise
        for i, s in enumerate(seqs):
            s.slot = start + i
            self.rows.append(s)
        self._postprocess(seqs, out, prefill=True)

    def step(self) -> None:
        """Drop cancelled rows, then one decode step for every running row."""
        self.drop_cancelled()
        if not self.rows:
            return
        rows = list(self.rows)
        if self.metrics is not None:
            self.metrics.batch_size.observe(len(rows))
            self.metrics.batch_configs.observe(len({s.steer.key for s in rows if s.steer.steered}))
        try:
            out = self._decode(0, rows)
        except Exception as exc:
            self._rescue(rows, exc)
        else:
            self._postprocess(rows, out)
        self._compact()

    def _decode(self, start: int, rows: Sequence[Row]) -> StepOutput:
        return self.runner.decode(start, len(rows))

    def _rescue(self, rows: list[Row], exc: Exception) -> None:
        """After a failed decode step, retry each row alone: only rows that fail alone fail.

        A row is rescued once; caught in a second failed step it fails with that error, which bounds the cost
        of a failure that is no row's own (say, out of memory at this batch size).
        """
        log.error("decode step failed; retrying its %d rows one by one", len(rows), exc_info=exc)
        if self.metrics is not None:
            self.metrics.step_failures.inc()
        _recover(exc)
        for s in rows:
            if s.finished:
                continue
            if s.cancelled:
                self.output.finish(s, "cancelled")
                continue
            if s.rescued:
                self._fail([s], exc)
                continue
            s.rescued = True
            try:
                assert s.slot is not None
                out = self._decode(s.slot, [s])
            except Exception as again:
                log.warning("row failed again on its own: %s", again)
                self._fail([s], again)
                continue
            if self.metrics is not None:
                self.metrics.rescued.inc()
            self._postprocess([s], out)

    # --- postprocess ------------------------------------------------------------------------------------
    def _postprocess(self, rows: Sequence[Row], out: StepOutput, *, prefill: bool = False) -> None:
        for i, s in enumerate(rows):
            if prefill and out.prompt_logprobs and out.prompt_logprobs[i] is not None:
                s.prompt_logprobs = out.prompt_logprobs[i] or []
            if prefill and s.sampling.max_new_tokens == 0:
                self.output.finish(s, "length")  # scoring only: the prompt's log-probs, no token
            else:
                self.output.token(s, out.tokens[i], out.logprobs[i])

    def drop_cancelled(self) -> None:
        for s in self.rows:
            if s.cancelled and not s.finished:
                self.output.finish(s, "cancelled")
        self._compact()

    def _compact(self) -> None:
        """Free the slots of finished rows; the last running row moves into each hole."""
        for slot in range(len(self.rows) - 1, -1, -1):
            if not self.rows[slot].finished:
                continue
            self.rows[slot].slot = None
            last = len(self.rows) - 1
            if slot != last:
                self.runner.move(last, slot)
                self.rows[slot] = self.rows[last]
                self.rows[slot].slot = slot
            else:
                self.runner.free(slot)
            self.rows.pop()

    def _fail(self, seqs: Sequence[Row], exc: BaseException) -> None:
        _recover(exc)
        for s in seqs:
            self.output.finish(s, "error", exc)
        self._compact()

    def fail_all(self, exc: BaseException, reason: str) -> None:
        for s in list(self.rows):
            self.output.finish(s, "cancelled" if reason == "cancelled" else "error", exc)
        self._compact()

    # --- synchronous use --------------------------------------------------------------------------------
    def run(self, seqs: list[Row]) -> list[Row]:
        """Run `seqs` to completion together (tests and warm-up)."""
        self.add(seqs)
        while self.rows:
            self.step()
        return seqs


def _recover(exc: BaseException) -> None:
    if isinstance(exc, torch.OutOfMemoryError) and torch.cuda.is_available():
        with contextlib.suppress(Exception):
            torch.cuda.empty_cache()
