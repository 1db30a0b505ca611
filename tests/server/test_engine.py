"""The engine without HTTP: continuous batching over slots with per-row steering is exact (CPU float32)."""

from __future__ import annotations

import pytest
import torch

from server.engine.model import LoadedModel
from server.engine.request import Row, SteerSpec
from server.engine.sampling import SamplingParams
from tests.server.kit_world import CATALOG, make_vector

PROMPTS = [
    "At a wedding we eat",
    "Hello",
    "In the morning people drink mint tea with",
    "Children play",
    "The capital has a big market near",
    "For a holiday we cook",
    "Numbers: 1 2 3",
    "How are you today?",
]


def greedy(n: int = 12) -> SamplingParams:
    return SamplingParams(max_new_tokens=n)


def specs(world: object) -> list[SteerSpec]:
    vecs = [make_vector(world, name, kind=kind, seed=seed) for name, (kind, seed) in CATALOG.items()]
    out = [SteerSpec(((v, 4.0),)) for v in vecs]
    out.append(SteerSpec(((vecs[0], 2.0), (vecs[1], -3.0))))  # two vectors composed
    return out


def run_alone(engine: LoadedModel, ids: list[int], spec: SteerSpec, params: SamplingParams) -> list[int]:
    seq = Row(ids, params, spec)
    engine.generate([seq])
    return seq.output_ids


def test_batched_rows_match_solo_runs(tiny_engine: LoadedModel, tiny_world: object) -> None:
    """Isolation: every row of an 8-row batch with 8 different steering configs equals its solo run."""
    steer = specs(tiny_world)
    ids = [tiny_engine.encode(prompt=p) for p in PROMPTS]
    rows = [(ids[i], steer[i % len(steer)]) for i in range(8)]
    solo = [run_alone(tiny_engine, i, s, greedy()) for i, s in rows]
    batch = [Row(i, greedy(), s) for i, s in rows]
    tiny_engine.generate(batch)
    assert [s.output_ids for s in batch] == solo
    unsteered = [run_alone(tiny_engine, i, SteerSpec(), greedy()) for i, _ in rows]
    changed = sum(a != b for a, b in zip(solo, unsteered, strict=True))
    assert changed >= 6, "steering should change most greedy continuations of the random model"


def test_rows_joining_mid_generation_match_solo(tiny_engine: LoadedModel, tiny_world: object) -> None:
    """Continuous batching: rows that join running rows at different steps still equal their solo runs."""
    steer = specs(tiny_world)
    ids = [tiny_engine.encode(prompt=p) for p in PROMPTS[:4]]
    params = [greedy(20), greedy(7), greedy(15), greedy(3)]
    solo = [run_alone(tiny_engine, i, steer[k], params[k]) for k, i in enumerate(ids)]
    seqs = [Row(i, params[k], steer[k]) for k, i in enumerate(ids)]
    batcher = tiny_engine.batcher()
    batcher.add([seqs[0]])
    for step in range(40):
        if step in (2, 5, 6):
            batcher.add([seqs[{2: 1, 5: 2, 6: 3}[step]]])
        if not batcher.rows:
            break
        batcher.step()
    assert [s.output_ids for s in seqs] == solo
    assert [s.finish_reason for s in seqs] == ["length"] * 4


def test_strength_zero_is_exactly_unsteered(tiny_engine: LoadedModel, tiny_world: object) -> None:
    """A steered-with-0 row next to steered neighbours produces exactly the unsteered tokens."""
    v = make_vector(tiny_world, "demo/beta", kind="sparse", seed=2)
    ids = tiny_engine.encode(prompt=PROMPTS[0])
    plain = run_alone(tiny_engine, ids, SteerSpec(), greedy())
    zero = Row(ids, greedy(), SteerSpec(((v, 0.0),)))
    neighbours = [Row(ids, greedy(), SteerSpec(((v, s),))) for s in (3.0, -5.0)]
    tiny_engine.generate([neighbours[0], zero, neighbours[1]])
    assert zero.output_ids == plain
    assert neighbours[0].output_ids != plain


def test_seeded_sampling_is_reproducible_and_batch_independent(tiny_engine: LoadedModel) -> None:
    ids = tiny_engine.encode(prompt=PROMPTS[1])
    params = SamplingParams(max_new_tokens=12, temperature=1.0, top_p=0.9, top_k=50, seed=7)
    a = run_alone(tiny_engine, ids, SteerSpec(), params)
    rows = [Row(ids, params), Row(ids, SamplingParams(max_new_tokens=12, temperature=1.0, seed=8))]
    tiny_engine.generate(rows)
    assert rows[0].output_ids == a
    assert rows[1].output_ids != a


def test_stop_string_truncates_and_finishes(tiny_engine: LoadedModel) -> None:
    ids = tiny_engine.encode(prompt=PROMPTS[2])
    full = Row(ids, greedy(12))
    tiny_engine.generate([full])
    stop = full.text[3:6]
    assert stop
    cut = Row(ids, SamplingParams(max_new_tokens=12, stop=(stop,)))
    tiny_engine.generate([cut])
    assert cut.finish_reason == "stop"
    assert cut.text == full.text[: full.text.find(stop)]


def test_ignore_eos_generates_past_an_end_of_sequence_token(
    tiny_engine: LoadedModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A row stops at an end-of-sequence token unless it asks `ignore_eos` (vLLM's field, which load tools send
    to fix the output length); then it runs to max_new_tokens, tokens unchanged. The tiny model's own EOS may never
    come, so its fourth greedy token is declared the end-of-sequence token here."""
    ids = tiny_engine.encode(prompt=PROMPTS[0])
    plain = Row(ids, greedy(12))
    tiny_engine.generate([plain])
    assert plain.finish_reason == "length" and len(plain.output_ids) == 12
    eos = plain.output_ids[3]
    monkeypatch.setattr(tiny_engine, "eos_ids", frozenset({eos}))
    stops = Row(ids, greedy(12))
    ignores = Row(ids, SamplingParams(max_new_tokens=12, ignore_eos=True))
    tiny_engine.generate([stops, ignores])
    first = plain.output_ids.index(eos)
    assert stops.finish_reason == "stop" and stops.output_ids == plain.output_ids[: first + 1]
    assert ignores.finish_reason == "length" and ignores.output_ids == plain.output_ids


def test_cancel_stops_a_row_at_the_next_step(tiny_engine: LoadedModel) -> None:
    ids = tiny_engine.encode(prompt=PROMPTS[0])
    keep, drop = Row(ids, greedy(10)), Row(ids, greedy(10))
    batcher = tiny_engine.batcher()
    batcher.add([drop, keep])
    drop.cancel()
    batcher.drop_cancelled()
    assert batcher.rows == [keep] and keep.slot == 0  # the last row moved into the freed slot
    while batcher.rows:
        batcher.step()
    assert drop.finish_reason == "cancelled" and len(drop.output_ids) == 1
    assert keep.finish_reason == "length" and keep.output_ids == run_alone(
        tiny_engine, ids, SteerSpec(), greedy(10)
    )


def test_adhoc_feature_vector(tiny_engine: LoadedModel) -> None:
    v = tiny_engine.adhoc_vector(5)
    assert v.space == "sae" and v.indices.tolist() == [5]
    with pytest.raises(ValueError, match="out of range"):
        tiny_engine.adhoc_vector(10**6)
    with pytest.raises(ValueError, match="no SAE at layer"):
        tiny_engine.adhoc_vector(1, layer=0)


def test_hooks_are_installed_once(tiny_engine: LoadedModel, tiny_world: object) -> None:
    """The engine's hooks stay for its life (one per decoder layer); generating adds or removes none."""
    v = make_vector(tiny_world, "demo/alpha", kind="positive", seed=1)

    def count() -> int:
        return sum(len(m._forward_hooks) for m in tiny_engine.model.modules())

    before = count()
    assert before == tiny_engine.num_layers
    tiny_engine.generate([Row(tiny_engine.encode(prompt="Hi"), greedy(3), SteerSpec(((v, 2.0),)))])
    assert count() == before
    assert torch.is_inference_mode_enabled() is False
