"""What `steer eval` reads: multiple-choice items of a target country (`McqItem`) and neutral facts
(`NeutralItem`), from JSONL.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

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


@dataclass(frozen=True)
class NeutralItem:
    prompt: str
    options: tuple[str, ...]
    answer: int


def load_mcq(path: str | Path) -> list[McqItem]:
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
    return items


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
