"""Test doubles of the engine's runner: injected failures and slow decode steps, never in production code.

`RunnerDouble` is a `ModelRunner` that
- fails the prefill of a row whose prompt text carries `[[fault:oom]]` (a `torch.OutOfMemoryError`) or
  `[[fault:error]]` (an `InjectedFault`), and every decode step of a row carrying `[[fault:step]]` — after the
  forward wrote the shared cache, before sampling, so the engine's rescue path is what is tested;
- sleeps `step_delay_s` before each decode step (requests stay in flight long enough to be cut short).
`installed(engine, ...)` makes a loaded model's runner one for a `with` block; `runner_double(...)` set as
`LoadedModel.runner_class` does the same for servers that load their own model (the subprocess in
test_lifecycle, the playground server).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator, Sequence
from typing import Any

import torch

from server.engine.model import LoadedModel
from server.engine.runner import ModelRunner
from server.engine.runner_io import NewRow, StepOutput

FAULT_OOM = "[[fault:oom]]"
FAULT_ERROR = "[[fault:error]]"
FAULT_STEP = "[[fault:step]]"


class InjectedFault(RuntimeError):
    """Raised on purpose by the runner double (tests of error handling)."""


class RunnerDouble(ModelRunner):
    """A `ModelRunner` with fault markers (read through `tokenizer`; None: no faults) and a per-step delay."""

    tokenizer: Any = None
    step_delay_s: float = 0.0
    _stepping: range | None = None

    @property
    def slot_faults(self) -> list[str | None]:
        """The marker of the row in each slot."""
        if "_slot_faults" not in self.__dict__:
            self._slot_faults: list[str | None] = [None] * self.slots
        return self._slot_faults

    def _fault(self, ids: Sequence[int]) -> str | None:
        if self.tokenizer is None:
            return None
        text = self.tokenizer.decode(list(ids))
        return next((m for m in (FAULT_OOM, FAULT_ERROR, FAULT_STEP) if m in text), None)

    def prefill(self, start: int, rows: Sequence[NewRow]) -> StepOutput:
        kinds = [self._fault(r.prompt_ids) for r in rows]
        if FAULT_OOM in kinds:
            raise torch.OutOfMemoryError("injected out-of-memory (fault injection)")
        if FAULT_ERROR in kinds:
            raise InjectedFault("injected error (fault injection)")
        out = super().prefill(start, rows)
        self.slot_faults[start : start + len(rows)] = kinds
        return out

    def decode(self, start: int, n: int) -> StepOutput:
        if self.step_delay_s:
            time.sleep(self.step_delay_s)
        self._stepping = range(start, start + n)
        try:
            return super().decode(start, n)
        finally:
            self._stepping = None

    def _sample(self, logits: torch.Tensor, start: int) -> StepOutput:
        if self._stepping is not None and any(self.slot_faults[s] == FAULT_STEP for s in self._stepping):
            raise InjectedFault("injected decode-step error (fault injection)")
        return super()._sample(logits, start)

    def move(self, src: int, dst: int) -> None:
        kind = self.slot_faults[src]
        super().move(src, dst)
        self.slot_faults[dst] = kind

    def free(self, slot: int) -> None:
        super().free(slot)
        self.slot_faults[slot] = None


def runner_double(*, step_delay_s: float = 0.0) -> type[ModelRunner]:
    """A runner class that sleeps `step_delay_s` per decode step, for `LoadedModel.runner_class`."""
    return type("SlowRunner", (RunnerDouble,), {"step_delay_s": step_delay_s})


@contextlib.contextmanager
def installed(
    engine: LoadedModel, *, faults: bool = True, step_delay_s: float = 0.0
) -> Iterator[LoadedModel]:
    """`engine`'s runner behaves as a `RunnerDouble` inside the block (the same object, so every scheduler
    over it sees the faults; nested blocks restore what the outer one set)."""
    runner = engine.runner
    saved_class, saved = runner.__class__, {k: runner.__dict__.get(k) for k in ("tokenizer", "step_delay_s")}
    if not isinstance(runner, RunnerDouble):
        runner.__class__ = RunnerDouble
    runner.tokenizer = engine.tokenizer if faults else None
    runner.step_delay_s = step_delay_s
    try:
        yield engine
    finally:
        for key, value in saved.items():
            if value is None:
                runner.__dict__.pop(key, None)
            else:
                setattr(runner, key, value)
        runner.__class__ = saved_class
