"""Scoring a steered model: the option with the highest summed log-probability, accuracy per group, retention
on neutral facts, and the paper's RCA / PNLG.
"""

from __future__ import annotations

import contextlib
from collections import defaultdict
from collections.abc import Iterator, Mapping, Sequence

from trainer.eval.items import McqItem, NeutralItem
from trainer.resources import Resources
from vectors.scoring import calibrated, option_logprobs_many, option_priors
from vectors.slots import apply_config
from vectors.vector import SteeringVector

EPS = 1e-8


@contextlib.contextmanager
def steered(res: Resources, vector: SteeringVector | None, strength: float) -> Iterator[None]:
    """Apply `strength · vector` at its layer on every position, through the server's steering code."""
    if vector is None or strength == 0:
        yield
        return
    if vector.space == "sae" and res.coder is None:
        raise ValueError(f"{vector.name} is an SAE-space vector: evaluation needs --sae")
    coders = [res.coder] if res.coder is not None else []
    with apply_config(res.model, {vector: strength}, coders):
        yield


def pick_options(
    res: Resources,
    questions: Sequence[tuple[str, Sequence[str]]],
    priors: Sequence[Sequence[float] | None] | None = None,
) -> list[int]:
    """Index of the highest-log-likelihood option of each (prompt, options), less its prior if given
    (`vectors.scoring.calibrated`); duplicates scored once."""
    index: dict[tuple[str, tuple[str, ...]], int] = {}
    unique: list[tuple[str, list[str]]] = []
    slots = []
    for prompt, options in questions:
        key = (prompt, tuple(options))
        if key not in index:
            index[key] = len(unique)
            unique.append((prompt, list(options)))
        slots.append(index[key])
    scores = option_logprobs_many(res.model, res.tokenizer, unique)
    picks = []
    for i, k in enumerate(slots):
        s = calibrated(scores[k], priors[i] if priors is not None else None)
        picks.append(max(range(len(s)), key=s.__getitem__))
    return picks


Priors = Mapping[McqItem, tuple[float, ...]]


def _texts(item: McqItem) -> list[str]:
    """The item's distinct answer texts (close cultures may share one), in option order."""
    return list(dict.fromkeys(a for _, a in item.options))


def mcq_priors(res: Resources, items: Sequence[McqItem]) -> dict[McqItem, tuple[float, ...]]:
    """The calibration prior of every item that has null prompts, from the model as it is now: call it
    unsteered, once, and pass the result to every `mcq_hits` of the evaluation."""
    calibrated_items = [it for it in items if it.null_prompts]
    values = option_priors(
        res.model, res.tokenizer, [(it.null_prompts, _texts(it)) for it in calibrated_items]
    )
    return dict(zip(calibrated_items, values, strict=True))


def mcq_hits(res: Resources, items: Sequence[McqItem], priors: Priors | None = None) -> list[bool]:
    """Whether each item's pick is its country's answer (the text: close cultures may share an answer).
    Items with null prompts need their prior in `priors` (`mcq_priors`)."""
    missing = [it.prompt for it in items if it.null_prompts and (priors is None or it not in priors)]
    if missing:
        raise ValueError(f"calibrated items without a prior (compute them with mcq_priors): {missing[:3]}")
    texts = [_texts(it) for it in items]
    item_priors = [priors[it] if it.null_prompts and priors is not None else None for it in items]
    picks = pick_options(res, [(it.prompt, t) for it, t in zip(items, texts, strict=True)], item_priors)
    return [t[p] == dict(it.options)[it.country] for it, t, p in zip(items, texts, picks, strict=True)]


def neutral_hits(res: Resources, items: Sequence[NeutralItem]) -> list[bool]:
    """Whether each neutral fact is answered right."""
    picks = pick_options(res, [(it.prompt, it.options) for it in items])
    return [p == it.answer for p, it in zip(picks, items, strict=True)]


def neutral_accuracy(res: Resources, items: Sequence[NeutralItem]) -> float:
    return sum(neutral_hits(res, items)) / len(items)


def shares_answer(item: McqItem) -> bool:
    """Whether another country of the item has the same answer (close cultures, `WorldConfig.shared_answers`)."""
    gold = dict(item.options)[item.country]
    return sum(a == gold for _, a in item.options) > 1


def group_accuracy(
    items: Sequence[McqItem], hits: Sequence[bool], close: bool = False
) -> dict[str, dict[str, float]]:
    """{split: {"localized", "nonlocalized", "both"}} plus split "all"; absent groups are left out. With `close`
    (some countries of the data share answers), also "nonlocalized_own": the non-localized items whose answer is
    the country's own, where a vector has to tell close cultures apart."""
    acc: dict[str, dict[str, list[bool]]] = defaultdict(lambda: defaultdict(list))
    for it, hit in zip(items, hits, strict=True):
        kind = "localized" if it.localized else "nonlocalized"
        for split in (it.split, "all"):
            acc[split][kind].append(hit)
            acc[split]["both"].append(hit)
            if close and not it.localized and not shares_answer(it):
                acc[split]["nonlocalized_own"].append(hit)
    return {s: {k: sum(v) / len(v) for k, v in groups.items()} for s, groups in acc.items()}


def rca(p_loc: float, p_non: float) -> float:
    return 2 * p_loc * p_non / (p_loc + p_non + EPS)


def pnlg(p_loc: float, p_non: float, alpha: float = 0.5) -> float:
    mean = (p_loc + p_non) / 2
    return (p_loc - p_non) / (mean**alpha + EPS)


def paper_metrics(acc: Mapping[str, Mapping[str, float]], alpha: float) -> dict[str, dict[str, float]]:
    out = {}
    for split, g in acc.items():
        if "localized" in g and "nonlocalized" in g:
            out[split] = {
                "rca": rca(g["localized"], g["nonlocalized"]),
                "pnlg": pnlg(g["localized"], g["nonlocalized"], alpha),
            }
    return out
