"""Option log-likelihood scoring: the paper's multiple-choice (MCQ) measure.

A question is a prompt plus options; the model "answers" with the option whose tokens have the
highest summed log-probability after the prompt. Used by the world build, `steer eval` and tests.
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

from vectors.prompts import format_prompt, has_chat_template


@dataclass(frozen=True)
class Question:
    """One multiple-choice question: `options[answer]` is the correct option."""

    prompt: str
    options: tuple[str, ...]
    answer: int


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
    batch_rows: int = 256,
) -> list[list[float]]:
    """`option_logprobs` for many (prompt, options) pairs, packing up to `batch_rows` rows per forward."""
    rows: list[tuple[list[int], list[int]]] = []
    for prompt, options in questions:
        if not options:
            raise ValueError(f"question {prompt!r} has no options")
        prefix = format_prompt(tokenizer, prompt=prompt)
        if not prefix:
            raise ValueError("an empty prompt without BOS has nothing to condition on")
        for option in options:
            suffix = option_ids(tokenizer, prompt, option)
            if not suffix:
                raise ValueError(f"option {option!r} encodes to no tokens")
            rows.append((prefix, suffix))
    scores: list[float] = []
    for start in range(0, len(rows), batch_rows):
        scores.extend(_score_rows(model, rows[start : start + batch_rows]))
    out: list[list[float]] = []
    pos = 0
    for _, options in questions:
        out.append(scores[pos : pos + len(options)])
        pos += len(options)
    return out


def predict_options(model: Any, tokenizer: Any, questions: Sequence[Question]) -> list[int]:
    """Index of the highest-scoring option of each question."""
    scores = option_logprobs_many(model, tokenizer, [(q.prompt, q.options) for q in questions])
    return [max(range(len(s)), key=s.__getitem__) for s in scores]


def option_accuracy(model: Any, tokenizer: Any, questions: Sequence[Question]) -> float:
    """Fraction of questions whose highest-scoring option is the correct one."""
    if not questions:
        raise ValueError("option_accuracy needs at least one question")
    picks = predict_options(model, tokenizer, questions)
    return sum(p == q.answer for p, q in zip(picks, questions, strict=True)) / len(questions)


@torch.no_grad()
def _score_rows(model: Any, rows: Sequence[tuple[list[int], list[int]]]) -> list[float]:
    """Summed log-prob of each row's suffix given its prefix; rows are right-padded into one batch.

    Only the positions that predict a suffix token reach the lm_head (`logits_to_keep` as a boolean
    mask): full-vocabulary logits over every prompt position of 256 rows were ~10 GB at Gemma's size.
    """
    device = next(model.parameters()).device
    lengths = [len(p) + len(s) for p, s in rows]
    width = max(lengths)
    input_ids = torch.zeros(len(rows), width, dtype=torch.long)
    mask = torch.zeros(len(rows), width, dtype=torch.long)
    keep = torch.zeros(len(rows), width, dtype=torch.bool)
    for i, (prefix, suffix) in enumerate(rows):
        input_ids[i, : lengths[i]] = torch.tensor(prefix + suffix)
        mask[i, : lengths[i]] = 1
        keep[i, len(prefix) - 1 : lengths[i] - 1] = True
    targets = torch.tensor([t for _, suffix in rows for t in suffix], device=device)
    kwargs: dict[str, Any] = {}
    if "logits_to_keep" in inspect.signature(model.forward).parameters:
        kwargs["logits_to_keep"] = keep.to(device)
    logits = model(input_ids=input_ids.to(device), attention_mask=mask.to(device), **kwargs).logits
    kept = logits if kwargs else logits[keep.to(device)]  # [sum of suffix lengths, vocab], row-major
    token_logp = torch.log_softmax(kept.float(), dim=-1).gather(-1, targets[:, None]).squeeze(-1).cpu()
    return [float(part.sum()) for part in token_logp.split([len(s) for _, s in rows])]


__all__ = [
    "Question",
    "option_accuracy",
    "option_ids",
    "option_logprobs",
    "option_logprobs_many",
    "predict_options",
]
