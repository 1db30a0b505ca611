"""The scheduler without HTTP: a failed decode step fails only the rows that fail again on their own.

Every request is queued before the worker starts, so all of them are admitted, prefilled and stepped together:
the failing step always holds every row, without any timing.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest
import torch

from server.engine.model import LoadedModel
from server.engine.request import Row, SteerSpec
from server.engine.sampling import SamplingParams
from server.engine.scheduler import Scheduler, SchedulerLimits
from tests.server.kit_doubles import FAULT_STEP, InjectedFault, installed
from tests.server.kit_world import CATALOG, make_vector

PROMPTS = ["At a wedding we eat", "Hello", "Children play"]


def rows(engine: LoadedModel, world: object, n_tokens: int = 12) -> list[Row]:
    """Three differently steered greedy rows (one unsteered)."""
    vecs = [make_vector(world, name, kind=kind, seed=seed) for name, (kind, seed) in CATALOG.items()]
    steer = [SteerSpec(((vecs[0], 4.0),)), SteerSpec(), SteerSpec(((vecs[1], -3.0),))]
    return [
        Row(engine.encode(prompt=p), SamplingParams(max_new_tokens=n_tokens), s)
        for p, s in zip(PROMPTS, steer, strict=True)
    ]


def solo(engine: LoadedModel, seq: Row) -> list[int]:
    twin = Row(seq.prompt_ids, seq.sampling, seq.steer)
    engine.generate([twin])
    return twin.output_ids


def run(engine: LoadedModel, requests: list[list[Row]], then: list[Row] | None = None) -> Scheduler:
    """Queue `requests`, start the worker, wait for all; then run `then` as one more request."""

    async def main() -> Scheduler:
        sched = Scheduler(engine, SchedulerLimits(max_batch=8, max_configs_per_batch=8))
        handles = [sched.submit(seqs) for seqs in requests]
        sched.start()
        try:
            for h in handles:
                await h.wait()
            if then is not None:
                await sched.submit(then).wait()
        finally:
            sched.shutdown()
        return sched

    return asyncio.run(main())


def counter(sched: Scheduler, name: str, **labels: str) -> float:
    value = sched.metrics.registry.get_sample_value(name, labels or None)
    assert value is not None, name
    return value


def failing_decode(engine: LoadedModel, fails: Callable[[int, int], bool]) -> Callable[..., torch.Tensor]:
    """The runner's forward, raising after a decode forward ran (its cache writes done) when
    `fails(rows, call)`: the worst state to recover from."""
    real = engine.runner._forward
    calls = 0

    def forward(
        ids: torch.Tensor, positions: torch.Tensor, start: int, kv_len: int, phase: str, keep: object
    ) -> torch.Tensor:
        nonlocal calls
        out = real(ids, positions, start, kv_len, phase, keep)
        if phase == "generation":
            calls += 1
            if fails(int(ids.shape[0]), calls):
                raise RuntimeError("step failed (test)")
        return out

    return forward


def test_step_fault_fails_only_the_culprit(tiny_engine: LoadedModel, tiny_world: object) -> None:
    innocent = rows(tiny_engine, tiny_world)
    expected = [solo(tiny_engine, s) for s in innocent]
    culprit = Row(tiny_engine.encode(prompt=f"Hello {FAULT_STEP}"), SamplingParams(max_new_tokens=12))
    with installed(tiny_engine):
        sched = run(tiny_engine, [[s] for s in innocent] + [[culprit]])
    assert [s.output_ids for s in innocent] == expected
    assert all(s.finish_reason == "length" for s in innocent)
    assert culprit.finish_reason == "error" and isinstance(culprit.error, InjectedFault)
    assert counter(sched, "steer_decode_step_failures_total") == 1
    assert counter(sched, "steer_rows_rescued_total") == 3
    assert counter(sched, "steer_request_failures_total", reason="error") == 1


def test_transient_step_failure_loses_no_row(
    tiny_engine: LoadedModel, tiny_world: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A failure that is no row's own (the 3rd step of the batch fails once): every row goes on, unchanged."""
    seqs = rows(tiny_engine, tiny_world)
    expected = [solo(tiny_engine, s) for s in seqs]
    monkeypatch.setattr(
        tiny_engine.runner, "_forward", failing_decode(tiny_engine, lambda n, call: call == 3)
    )
    sched = run(tiny_engine, [[s] for s in seqs])
    assert [s.output_ids for s in seqs] == expected
    assert counter(sched, "steer_decode_step_failures_total") == 1
    assert counter(sched, "steer_rows_rescued_total") == 3
    assert counter(sched, "steer_request_failures_total", reason="error") == 0


def test_persistent_batch_failure_fails_every_row_once_and_the_worker_goes_on(
    tiny_engine: LoadedModel, tiny_world: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every step of more than one row fails: each row is rescued once, then fails; a later request is served."""
    seqs = rows(tiny_engine, tiny_world)
    later = rows(tiny_engine, tiny_world, n_tokens=4)[:1]
    expected_later = solo(tiny_engine, later[0])
    monkeypatch.setattr(tiny_engine.runner, "_forward", failing_decode(tiny_engine, lambda n, call: n > 1))
    sched = run(tiny_engine, [[s] for s in seqs], then=later)
    assert all(s.finish_reason == "error" and "test" in str(s.error) for s in seqs)
    # the prefill's token, then the failed step (no token), its rescue alone (a token), the second failed step
    assert all(len(s.output_ids) == 2 for s in seqs)
    assert counter(sched, "steer_decode_step_failures_total") == 2
    assert counter(sched, "steer_rows_rescued_total") == 3
    assert counter(sched, "steer_request_failures_total", reason="error") == 3
    assert later[0].output_ids == expected_later and later[0].finish_reason == "length"


def test_two_schedulers_on_one_engine_take_turns(tiny_engine: LoadedModel, tiny_world: object) -> None:
    """Both queue steered rows at once: the second waits for the first's slots to empty (the engine's turn),
    so neither writes into the other's slots, and every row is its solo answer."""
    first, second = rows(tiny_engine, tiny_world), rows(tiny_engine, tiny_world)[::-1]
    expected = [solo(tiny_engine, s) for s in first + second]

    async def main() -> None:
        scheds = [Scheduler(tiny_engine, SchedulerLimits(max_batch=8, max_configs_per_batch=8)) for _ in "ab"]
        handles = [scheds[0].submit(first), scheds[1].submit(second)]
        for sched in scheds:
            sched.start()
        try:
            for h in handles:
                await h.wait()
        finally:
            for sched in scheds:
                sched.shutdown()

    asyncio.run(main())
    assert [s.output_ids for s in first + second] == expected
