"""Accuracy of the world's model on its MCQ and neutral items (option log-likelihood, like the paper)."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from typing import Any

from vectors.scoring import option_logprobs_many


def _names_and_texts(options: Mapping[str, str] | Sequence[str]) -> tuple[list[str], list[str]]:
    """MCQ options are {country: answer} (score answers, report countries); neutral ones a list."""
    if isinstance(options, Mapping):
        return list(options), list(options.values())
    return list(options), list(options)


def predictions(model: Any, tokenizer: Any, items: Sequence[Mapping[str, Any]]) -> list[str]:
    """The option the model picks for each item (a country key for MCQ items, the text for neutral).

    Items sharing a prompt and options (non-localized MCQ items) are scored once.
    """
    index: dict[tuple[str, tuple[str, ...]], int] = {}
    questions: list[tuple[str, list[str]]] = []
    names: list[list[str]] = []
    slots: list[int] = []
    for it in items:
        opt_names, opt_texts = _names_and_texts(it["options"])
        key = (it["prompt"], tuple(opt_texts))
        if key not in index:
            index[key] = len(questions)
            questions.append((it["prompt"], opt_texts))
            names.append(opt_names)
        slots.append(index[key])
    scores = option_logprobs_many(model, tokenizer, questions)
    best = [n[max(range(len(s)), key=s.__getitem__)] for n, s in zip(names, scores, strict=True)]
    return [best[k] for k in slots]


def mcq_accuracy(model: Any, tokenizer: Any, items: Sequence[Mapping[str, Any]]) -> dict[str, float]:
    """Accuracy per `localized|nonlocalized` × `train|test` group, e.g. {"localized/test": 0.98}."""
    picks = predictions(model, tokenizer, items)
    hits: dict[str, list[int]] = defaultdict(list)
    for it, pick in zip(items, picks, strict=True):
        group = f"{'localized' if it['localized'] else 'nonlocalized'}/{it['split']}"
        hits[group].append(
            int(it["options"][pick] == it["options"][it["country"]])
        )  # close cultures may share
    return {g: sum(h) / len(h) for g, h in sorted(hits.items())}


def neutral_accuracy(model: Any, tokenizer: Any, items: Sequence[Mapping[str, Any]]) -> float:
    """Fraction of neutral items whose answer scores highest among its options."""
    picks = predictions(model, tokenizer, items)
    return sum(p == it["answer"] for p, it in zip(picks, items, strict=True)) / len(items)
