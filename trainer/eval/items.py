"""What `steer eval` reads: multiple-choice items of a target country (`McqItem`) and neutral facts
(`NeutralItem`), from JSONL.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from trainer.data import DataError, read_rows

DEFAULT_STRENGTHS = (-2.0, -1.0, 0.0, 0.5, 1.0, 1.5, 2.0)


@dataclass(frozen=True)
class McqItem:
    """A culture MCQ: `options` maps each country to its answer; the gold option is `country`'s."""

    prompt: str
    options: tuple[tuple[str, str], ...]
    country: str
    topic: str
    localized: bool
    split: str
    # calibration (`vectors.scoring.option_priors`): the options are scored relative to their mean unsteered
    # log-probability after these prompts; empty: raw log-likelihood
    null_prompts: tuple[str, ...] = ()


@dataclass(frozen=True)
class NeutralItem:
    prompt: str
    options: tuple[str, ...]
    answer: int


def load_mcq(path: str | Path) -> list[McqItem]:
    """MCQ rows; a row with `"calibrate": true` is scored relative to the localized prompts of its topic (every
    country's, from the same file): see `vectors.scoring.option_priors`."""
    rows = read_rows(path)
    need = {"prompt", "options", "country", "localized"}
    items = []
    for i, r in enumerate(rows):
        missing = need - set(r)
        if missing or not isinstance(r["options"], dict):
            raise DataError(
                f"{path}: row {i}: MCQ rows need {sorted(need)} with options as {{country: answer}}"
            )
        items.append(
            McqItem(
                r["prompt"],
                tuple(r["options"].items()),
                r["country"],
                str(r.get("topic", "")),
                bool(r["localized"]),
                str(r.get("split", "all")),
            )
        )
    if not items:
        raise DataError(f"{path}: no MCQ items")
    return _calibrate(path, rows, items)


def _calibrate(path: str | Path, rows: list[dict[str, Any]], items: list[McqItem]) -> list[McqItem]:
    localized: dict[str, list[str]] = {}
    for it in items:
        if it.localized:
            localized.setdefault(it.topic, []).append(it.prompt)
    out = []
    for i, (r, it) in enumerate(zip(rows, items, strict=True)):
        if r.get("calibrate"):
            nulls = tuple(dict.fromkeys(localized.get(it.topic, ())))
            if not nulls:
                raise DataError(f"{path}: row {i}: calibrate needs localized rows of topic {it.topic!r}")
            it = replace(it, null_prompts=nulls)
        out.append(it)
    return out


def load_neutral(path: str | Path) -> list[NeutralItem]:
    items = []
    for i, r in enumerate(read_rows(path)):
        try:
            options = tuple(r["options"])
            items.append(NeutralItem(r["prompt"], options, options.index(r["answer"])))
        except (KeyError, ValueError, TypeError):
            raise DataError(
                f"{path}: row {i}: neutral rows need prompt, options [..] and answer among them"
            ) from None
    if not items:
        raise DataError(f"{path}: no neutral items")
    return items
