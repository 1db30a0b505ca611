"""Option log-likelihood scoring: the paper's multiple-choice (MCQ) measure.

A question is a prompt plus options; the model "answers" with the option whose tokens have the
highest summed log-probability after the prompt. Used by the world build, `steer eval` and tests.

Calibrated questions (`Question.prior`) subtract a per-option prior first: the option's mean log-probability
after a set of null prompts, measured once on the unsteered model (`option_priors`). A real model's raw
log-likelihoods favour short, frequent answers ("dollar" over "dirham" even after "In Morocco, we pay with the");
relative to the mean over every country's localized prompt of the same question, an option wins where this
prompt favours it more than naming a country at random does (contextual calibration, as in Holtzman et al.
2021's domain-conditional PMI). The prior stays unsteered: steering toward an answer must move the score.
There is no steering logic here: run these functions inside a `vectors.slots.apply_config` context to score a
steered model. Every row of one forward pass belongs to the same question set, so the enclosing
context should apply one steering config to all rows (and keep its phase at "prompt").
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from vectors.hooks import text_config
from vectors.prompts import format_prompt, has_chat_template


@dataclass(frozen=True)
class Question:
    """One multiple-choice question: `options[answer]` is the correct option."""

    prompt: str
    options: tuple[str, ...]
    answer: int
    prior: tuple[float, ...] | None = None  # subtracted from each option's log-probability (`option_priors`)


def option_ids(tokenizer: Any, prompt: str, option: str) -> list[int]:
    """Token ids of an option as it continues `prompt`.

    Plain-text prompts get a separating space (unless either side already has whitespace), so
    "At a wedding we eat" + "couscous" scores " couscous"; chat prompts end with the template's
    generation prompt and the option follows it directly.
    """
    text = option
    if not has_chat_template(tokenizer) and prompt and not prompt[-1].isspace() and not option[:1].isspace():
        text = " " + option
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def option_logprobs(model: Any, tokenizer: Any, prompt: str, options: Sequence[str]) -> list[float]:
    """Summed log-probability of each option's tokens after the prompt (one batched forward)."""
    return option_logprobs_many(model, tokenizer, [(prompt, options)])[0]


def option_logprobs_many(
    model: Any,
    tokenizer: Any,
    questions: Sequence[tuple[str, Sequence[str]]],
    *,
    batch_rows: int = 64,
) -> list[list[float]]:
    """`option_logprobs` for many (prompt, options) pairs: one packed row per question, `batch_rows` per forward."""
    packed: list[tuple[list[int], list[list[int]]]] = []
    for prompt, options in questions:
        if not options:
            raise ValueError(f"question {prompt!r} has no options")
        prefix = format_prompt(tokenizer, prompt=prompt)
        if not prefix:
            raise ValueError("an empty prompt without BOS has nothing to condition on")
        suffixes = [option_ids(tokenizer, prompt, option) for option in options]
        for option, suffix in zip(options, suffixes, strict=True):
            if not suffix:
                raise ValueError(f"option {option!r} encodes to no tokens")
        packed.append((prefix, suffixes))
    out: list[list[float]] = []
    for start in range(0, len(packed), batch_rows):
        out.extend(score_options(model, packed[start : start + batch_rows]))
    return out


def option_priors(
    model: Any, tokenizer: Any, questions: Sequence[tuple[Sequence[str], Sequence[str]]]
) -> list[tuple[float, ...]]:
    """Each (null prompts, options)'s per-option mean log-probability over its null prompts; every distinct
    (prompt, options) is scored once. Run it outside any steering context: priors are the unsteered model's."""
    unique = list(dict.fromkeys((p, tuple(opts)) for nulls, opts in questions for p in nulls))
    scored = dict(zip(unique, option_logprobs_many(model, tokenizer, unique), strict=True))
    out = []
    for nulls, opts in questions:
        if not nulls:
            raise ValueError(f"options {list(opts)!r}: a prior needs at least one null prompt")
        rows = [scored[(p, tuple(opts))] for p in nulls]
        out.append(tuple(sum(col) / len(rows) for col in zip(*rows, strict=True)))
    return out


def calibrated(scores: Sequence[float], prior: Sequence[float] | None) -> list[float]:
    """`scores` less the prior (unchanged without one)."""
    if prior is None:
        return list(scores)
    if len(prior) != len(scores):
        raise ValueError(f"a prior of {len(prior)} values for {len(scores)} options")
    return [s - p for s, p in zip(scores, prior, strict=True)]


def predict_options(model: Any, tokenizer: Any, questions: Sequence[Question]) -> list[int]:
    """Index of the highest-scoring option of each question (calibrated by its prior, if any)."""
    scores = option_logprobs_many(model, tokenizer, [(q.prompt, q.options) for q in questions])
    out = []
    for q, raw in zip(questions, scores, strict=True):
        s = calibrated(raw, q.prior)
        out.append(max(range(len(s)), key=s.__getitem__))
    return out


def option_accuracy(model: Any, tokenizer: Any, questions: Sequence[Question]) -> float:
    """Fraction of questions whose highest-scoring option is the correct one."""
    if not questions:
        raise ValueError("option_accuracy needs at least one question")
    picks = predict_options(model, tokenizer, questions)
    return sum(p == q.answer for p, q in zip(picks, questions, strict=True)) / len(questions)


@torch.no_grad()
def score_options(model: Any, rows: Sequence[tuple[list[int], list[list[int]]]]) -> list[list[float]]:
    """Summed log-prob of each option's token ids after its prompt's, the prompt run once per question.

    A row is the prompt followed by all its options; a 4-D mask lets each option token see the prompt and its
    own earlier tokens only, and its position ids continue from the prompt, so every option is scored exactly
    as if it followed the prompt alone. Only the positions that predict an option token reach the lm_head
    (`logits_to_keep` as a boolean mask): full-vocabulary logits over every position were ~10 GB at Gemma's size.
    """
    device = next(model.parameters()).device
    dtype = next(model.parameters()).dtype
    lengths = [len(p) + sum(len(o) for o in opts) for p, opts in rows]
    width = max(lengths)
    ids = torch.zeros(len(rows), width, dtype=torch.long)
    positions = torch.zeros(len(rows), width, dtype=torch.long)
    group = torch.full((len(rows), width), -1, dtype=torch.long)  # -1: the prompt; j: option j; -2: padding
    keep = torch.zeros(len(rows), width, dtype=torch.bool)
    predictors: list[int] = []  # flat index (row · width + column) of the position predicting each target
    targets: list[int] = []
    for i, (prefix, options) in enumerate(rows):
        p = len(prefix)
        ids[i, :p] = torch.tensor(prefix)
        positions[i, :p] = torch.arange(p)
        group[i, lengths[i] :] = -2
        col = p
        for j, suffix in enumerate(options):
            n = len(suffix)
            ids[i, col : col + n] = torch.tensor(suffix)
            positions[i, col : col + n] = torch.arange(p, p + n)
            group[i, col : col + n] = j
            for m, token in enumerate(suffix):
                predictors.append(i * width + (p - 1 if m == 0 else col + m - 1))
                targets.append(token)
            col += n
        keep.view(-1)[torch.tensor(predictors[-sum(len(o) for o in options) :])] = True
    q, k = group[:, :, None], group[:, None, :]
    cols = torch.arange(width)
    causal = cols[None, :, None] >= cols[None, None, :]
    allowed = causal & ((k == -1) | (k == q)) & (q != -2)
    allowed |= torch.eye(width, dtype=torch.bool)[None]  # padding sees itself (no empty softmax)
    mask = _additive(allowed, dtype).to(device)
    window = getattr(text_config(model), "sliding_window", None)
    attention: Any = mask
    if window and width > window:  # a sliding window shorter than a row: measured in positions
        near = positions[:, :, None] - positions[:, None, :] < window
        attention = {"full_attention": mask, "sliding_attention": _additive(allowed & near, dtype).to(device)}
    kwargs: dict[str, Any] = {"position_ids": positions.to(device), "attention_mask": attention}
    if "logits_to_keep" in inspect.signature(model.forward).parameters:
        kwargs["logits_to_keep"] = keep.to(device)
    logits = model(input_ids=ids.to(device), **kwargs).logits
    flat_keep = keep.view(-1)
    kept = logits if "logits_to_keep" in kwargs else logits[keep.to(device)]  # [kept positions, vocab]
    index = (flat_keep.cumsum(0) - 1)[torch.tensor(predictors)]  # each target's row in `kept`
    flat = kept.reshape(-1, kept.shape[-1])
    logp = torch.log_softmax(flat.to(torch.promote_types(flat.dtype, torch.float32)), dim=-1)  # ≥ fp32
    token_logp = logp[index.to(device), torch.tensor(targets, device=device)].cpu()
    sizes = [len(o) for _, opts in rows for o in opts]
    sums = [float(part.sum()) for part in torch.split(token_logp, sizes)]
    out: list[list[float]] = []
    pos = 0
    for _, opts in rows:
        out.append(sums[pos : pos + len(opts)])
        pos += len(opts)
    return out


def _additive(allowed: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """[n, q, k] booleans → additive [n, 1, q, k] mask in `dtype`."""
    low = torch.tensor(torch.finfo(dtype).min, dtype=dtype)
    return torch.where(allowed, torch.zeros((), dtype=dtype), low)[:, None]


__all__ = [
    "Question",
    "calibrated",
    "option_accuracy",
    "option_ids",
    "option_logprobs",
    "option_logprobs_many",
    "option_priors",
    "predict_options",
    "score_options",
]
