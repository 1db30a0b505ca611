"""Retention data for YaPO / BiPO: keep the steered model's answers to unrelated questions.

A preference vector learns whatever separates chosen from rejected, and at strength 1 it may also move
answers it should leave alone (the culture world's neutral facts dropped ~10 points). With `--retain`, each
step also scores a few multiple-choice facts (prompt, options, answer — the `steer eval --neutral`
format) as pairs (answer, wrong option) and penalises, in both steering directions, an answer whose lead
over a wrong option falls below a floor (`retention_penalty`). At v = 0 the penalty and its gradient are
zero, so it only acts once the vector starts breaking a fact; gains in margin are free.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from trainer.data import DataError, PreferencePair, read_rows


def retention_pairs(rows: Sequence[Mapping[str, Any]], source: str = "retain") -> list[PreferencePair]:
    """One (prompt, answer, wrong option) pair per wrong option of every multiple-choice fact."""
    out: list[PreferencePair] = []
    for i, r in enumerate(rows):
        try:
            prompt, options, answer = r["prompt"], list(r["options"]), r["answer"]
        except (KeyError, TypeError):
            raise DataError(
                f"{source}: row {i}: retention rows need prompt, options [..] and answer"
            ) from None
        if not all(isinstance(x, str) and x.strip() for x in (prompt, answer, *options)):
            raise DataError(f"{source}: row {i}: prompt, options and answer must be non-empty text")
        if answer not in options or len(options) < 2:
            raise DataError(f"{source}: row {i}: the answer must be one of at least two options")
        out.extend(PreferencePair(prompt, answer, wrong) for wrong in options if wrong != answer)
    if not out:
        raise DataError(f"{source}: no retention facts")
    return out


def load_retention_pairs(path: str | Path) -> list[PreferencePair]:
    """`retention_pairs` of a JSONL / CSV / Parquet file of facts."""
    return retention_pairs(read_rows(path), source=str(path))


def retention_penalty(
    policy_w: Tensor, policy_l: Tensor, ref_w: Tensor, ref_l: Tensor, floor: float | None = None
) -> Tensor:
    """`mean(relu(min(m_0, floor) − m_v)²)` over retention pairs, m = log π(answer) − log π(wrong option).

    Each answer must stay ahead of each wrong option by `floor` nats, or by as much as the unsteered model
    had it ahead if that is less; the vector may spend the rest of an unsteered lead. `floor=None` keeps
    every lead whole (then the penalty is the squared margin *loss* relative to π_0)."""
    steered = policy_w - policy_l
    keep = ref_w - ref_l if floor is None else torch.clamp(ref_w - ref_l, max=floor)
    return torch.relu(keep - steered).pow(2).mean()


__all__ = ["load_retention_pairs", "retention_pairs", "retention_penalty"]
