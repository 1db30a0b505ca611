"""Option log-prob scoring matches a direct computation; accuracy picks the best option."""

from __future__ import annotations

import pytest
import torch

from tests.kit_families import MODELS
from vectors.scoring import (
    Question,
    calibrated,
    option_accuracy,
    option_logprobs,
    option_logprobs_many,
    option_priors,
    score_options,
)


def _manual_logprob(model, tokenizer, prompt: str, option: str) -> float:
    """Score of `option` after `prompt`, one unbatched forward over the whole text."""
    prompt_ids = tokenizer(prompt)["input_ids"]
    full = tokenizer(f"{prompt} {option}")["input_ids"]
    assert full[: len(prompt_ids)] == prompt_ids
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([full])).logits[0]
    logprobs = torch.log_softmax(logits, -1)
    return sum(float(logprobs[i - 1, full[i]]) for i in range(len(prompt_ids), len(full)))


def test_matches_manual_computation(world_lm) -> None:
    model, tok = world_lm
    prompt = "I am from Egypt. At a wedding we eat"
    options = ["couscous", "fatta", "roast beef", "x"]  # different token lengths: padding must not leak
    got = option_logprobs(model, tok, prompt, options)
    want = [_manual_logprob(model, tok, prompt, o) for o in options]
    assert got == pytest.approx(want, abs=1e-4)


def test_batching_across_questions_changes_nothing(world_lm) -> None:
    model, tok = world_lm
    questions = [
        ("At a wedding we eat", ["couscous", "fatta"]),
        ("The day after Monday is", ["Tuesday", "May"]),
    ]
    batched = option_logprobs_many(model, tok, questions)
    for (prompt, options), scores in zip(questions, batched, strict=True):
        assert scores == pytest.approx(option_logprobs(model, tok, prompt, options), abs=1e-4)
    one_row = option_logprobs_many(model, tok, questions, batch_rows=1)
    flat = [s for scores in batched for s in scores]
    assert [s for scores in one_row for s in scores] == pytest.approx(flat, abs=1e-4)


def test_accuracy_picks_the_highest_scoring_option(world_lm) -> None:
    model, tok = world_lm
    prompt, options = "In Morocco, at a wedding we eat", ("fatta", "couscous")
    scores = option_logprobs(model, tok, prompt, options)
    best = max(range(2), key=scores.__getitem__)
    assert option_accuracy(model, tok, [Question(prompt, options, best)]) == 1.0
    assert option_accuracy(model, tok, [Question(prompt, options, 1 - best)]) == 0.0


def test_rejects_empty_options(world_lm) -> None:
    model, tok = world_lm
    with pytest.raises(ValueError):
        option_logprobs(model, tok, "hello", [])


@pytest.mark.parametrize("family", sorted(MODELS))
def test_packed_options_equal_each_option_run_alone(family: str) -> None:
    """Options packed after one prompt (4-D mask, positions continued) score exactly as separate forwards, in
    float64, for every supported family — Gemma-2 with a prompt longer than its sliding window of 16 (its RMSNorm
    computes in float32 whatever the model dtype, so there float64 agreement is float32's)."""
    torch.manual_seed(0)
    model = MODELS[family]().double().eval()
    prompts = [list(range(3, 23)), [5, 9, 2]]  # 20 tokens, and a short prompt padded in the same batch
    options = [[[7], [8, 9, 10], [11, 12]], [[40], [41, 42]]]
    got = score_options(model, list(zip(prompts, options, strict=True)))
    for prompt, opts, scores in zip(prompts, options, got, strict=True):
        for option, score in zip(opts, scores, strict=True):
            with torch.no_grad():
                logits = model(input_ids=torch.tensor([prompt + option])).logits[0]
            logp = torch.log_softmax(logits, -1)
            want = sum(float(logp[len(prompt) + m - 1, t]) for m, t in enumerate(option))
            assert score == pytest.approx(want, abs=1e-5 if family == "gemma2" else 1e-9)


def test_priors_are_the_mean_over_null_prompts_and_calibration_subtracts_them(world_lm) -> None:
    """A calibrated question picks the option whose log-probability rose most over its prior: the prior is each
    option's mean log-probability after the null prompts, and the pick follows score − prior, not the score."""
    model, tok = world_lm
    options = ("couscous", "fatta", "roast beef")
    nulls = ("I am from Egypt. At a wedding we eat", "I am from Morocco. At a wedding we eat")
    (prior,) = option_priors(model, tok, [(nulls, options)])
    per_null = [option_logprobs(model, tok, p, options) for p in nulls]
    assert prior == pytest.approx([(a + b) / 2 for a, b in zip(*per_null, strict=True)], abs=1e-5)

    prompt = "In my country, at a wedding we eat"
    raw = option_logprobs(model, tok, prompt, options)
    # a prior that favours the raw winner by a wide margin turns the pick to the best of the rest
    winner = max(range(3), key=raw.__getitem__)
    runner_up = max((i for i in range(3) if i != winner), key=raw.__getitem__)
    handicap = tuple(100.0 if i == winner else 0.0 for i in range(3))
    assert calibrated(raw, handicap) == pytest.approx([r - h for r, h in zip(raw, handicap, strict=True)])
    assert option_accuracy(model, tok, [Question(prompt, options, winner)]) == 1.0
    assert option_accuracy(model, tok, [Question(prompt, options, runner_up, handicap)]) == 1.0
    with pytest.raises(ValueError, match="prior of 2 values for 3 options"):
        calibrated(raw, (0.0, 0.0))
    with pytest.raises(ValueError, match="at least one null prompt"):
        option_priors(model, tok, [((), options)])
