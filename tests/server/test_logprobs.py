"""The engine's log-prob contract (server/logprobs.py): per generated token and over the prompt, from the raw
model's logits, right in mixed batches (left padding, rows that ask and rows that do not, scoring-only rows)."""

from __future__ import annotations

import pytest
import torch

from server.engine.logprobs import chosen_logprobs, prompt_logprobs
from server.engine.model import LoadedModel
from server.engine.request import Row
from server.engine.sampling import SamplingParams

PROMPTS = ["At a wedding we eat", "Hello", "Children play football in the street"]


def ids_of(engine: LoadedModel, text: str) -> list[int]:
    return engine.tokenizer(text)["input_ids"]


def reference(engine: LoadedModel, ids: list[int]) -> torch.Tensor:
    with torch.no_grad():
        return torch.log_softmax(engine.model(input_ids=torch.tensor([ids])).logits[0].float(), dim=-1)


def test_chosen_logprobs_rows_and_top() -> None:
    logits = torch.tensor([[0.0, 1.0, 3.0, 2.0], [5.0, 0.0, 0.0, 0.0]])
    out = chosen_logprobs(logits, torch.tensor([3, 1]), [2, None])
    logp = torch.log_softmax(logits, dim=-1)
    assert out[1] is None
    assert out[0] is not None and out[0].token == 3 and out[0].logprob == pytest.approx(float(logp[0, 3]))
    assert [t for t, _ in out[0].top] == [2, 3] and out[0].top[0][1] == pytest.approx(float(logp[0, 2]))
    assert prompt_logprobs(logits, [7], 1) == [None]
    with pytest.raises(ValueError):
        chosen_logprobs(logits, torch.tensor([1]), [1, 1])


def test_mixed_batch_logprobs_match_each_rows_own_forward(tiny_engine: LoadedModel) -> None:
    rows = [ids_of(tiny_engine, p) for p in PROMPTS]
    seqs = [
        Row(rows[0], SamplingParams(max_new_tokens=4, logprobs=3, prompt_logprobs=2)),
        Row(rows[1], SamplingParams(max_new_tokens=4)),  # asks for nothing
        Row(rows[2], SamplingParams(max_new_tokens=0, prompt_logprobs=0)),  # scoring only
    ]
    tiny_engine.generate(seqs)
    scored, plain, scoring = seqs
    assert plain.output_logprobs == [] and plain.prompt_logprobs == [] and len(plain.output_ids) == 4
    assert scoring.finish_reason == "length" and scoring.output_ids == [] and scoring.output_logprobs == []
    for seq, top in ((scored, 2), (scoring, 0)):
        ref = reference(tiny_engine, seq.prompt_ids)
        assert seq.prompt_logprobs[0] is None and len(seq.prompt_logprobs) == len(seq.prompt_ids)
        for t, entry in enumerate(seq.prompt_logprobs[1:]):
            assert entry is not None and entry.token == seq.prompt_ids[t + 1] and len(entry.top) == top
            assert entry.logprob == pytest.approx(float(ref[t, seq.prompt_ids[t + 1]]), abs=1e-4)
    full = reference(tiny_engine, scored.prompt_ids + scored.output_ids)
    n = len(scored.prompt_ids)
    assert [e.token for e in scored.output_logprobs] == scored.output_ids
    for j, entry in enumerate(scored.output_logprobs):
        assert entry.logprob == pytest.approx(float(full[n - 1 + j, entry.token]), abs=1e-4)
        assert entry.top[0] == (entry.token, entry.logprob)  # greedy: the chosen token is the top one
    solo = Row(rows[1], SamplingParams(max_new_tokens=4))
    assert tiny_engine.generate([solo])[0].output_ids == plain.output_ids  # neighbours change nothing
