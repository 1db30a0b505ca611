"""The real-model world's evaluation records: general-knowledge facts (retention) and cultural items outside
the topic table (generalization), loaded from this package's JSON and validated on load.

Both are written for a base model: a `Fact` is a sentence beginning with four short completions, one right;
a `CultureItem` is a first-person-plural stem ("Our most famous singer is") with one real answer per country,
in `COUNTRIES` order, so an item never names the country it is asked about.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trainer.data import DataError, read_rows
from trainer.world.facts import COUNTRIES

FACTS_PATH = Path(__file__).with_name("facts.json")
CULTURE_ITEMS_PATH = Path(__file__).with_name("culture_items.json")
FACT_OPTIONS = 4


@dataclass(frozen=True)
class Fact:
    """A cloze multiple-choice fact: `options[answer]` completes `prompt` correctly, the others plainly do not."""

    prompt: str
    options: tuple[str, ...]
    answer: int
    category: str


@dataclass(frozen=True)
class CultureItem:
    """A cultural item: `answers[i]` is `COUNTRIES[i]`'s real answer to `stem`."""

    key: str
    stem: str
    answers: tuple[str, ...]
    category: str


def load_facts(path: str | Path = FACTS_PATH) -> tuple[Fact, ...]:
    """Every fact of `path`; a malformed row or a repeated prompt raises `DataError` naming row and field."""
    facts = []
    for i, row in enumerate(read_rows(path)):
        where = f"{path}: row {i}"
        _check_fields(row, ("prompt", "options", "answer", "category"), where)
        options = _strings(row["options"], f"{where}: options")
        if len(options) != FACT_OPTIONS or len(set(options)) != FACT_OPTIONS:
            raise DataError(f"{where}: options must be {FACT_OPTIONS} distinct strings, got {list(options)}")
        answer = row["answer"]
        if not isinstance(answer, int) or isinstance(answer, bool) or not 0 <= answer < FACT_OPTIONS:
            raise DataError(f"{where}: answer must be an option index 0..{FACT_OPTIONS - 1}, got {answer!r}")
        facts.append(Fact(row["prompt"], options, answer, row["category"]))
    _check_unique([f.prompt for f in facts], "prompt", path)
    return tuple(facts)


def load_culture_items(path: str | Path = CULTURE_ITEMS_PATH) -> tuple[CultureItem, ...]:
    """Every item of `path`; each needs one distinct answer per country of `COUNTRIES` and a unique key."""
    items = []
    for i, row in enumerate(read_rows(path)):
        where = f"{path}: row {i}"
        _check_fields(row, ("key", "stem", "answers", "category"), where)
        answers = _strings(row["answers"], f"{where}: answers")
        if len(answers) != len(COUNTRIES) or len(set(answers)) != len(answers):
            raise DataError(
                f"{where}: answers must be {len(COUNTRIES)} distinct strings, one per country in the order "
                f"{[c.key for c in COUNTRIES]}, got {len(answers)} ({len(set(answers))} distinct)"
            )
        items.append(CultureItem(row["key"], row["stem"], answers, row["category"]))
    _check_unique([item.key for item in items], "key", path)
    return tuple(items)


def _check_fields(row: dict[str, Any], fields: tuple[str, ...], where: str) -> None:
    """Exactly `fields`, every text field a non-empty string (list fields are checked by their loader)."""
    if set(row) != set(fields):
        raise DataError(f"{where}: fields must be {list(fields)}, got {sorted(row)}")
    for name in fields:
        if name not in ("options", "answers", "answer") and not _is_text(row[name]):
            raise DataError(f"{where}: {name} must be a non-empty string, got {row[name]!r}")


def _strings(value: Any, where: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(_is_text(v) for v in value):
        raise DataError(f"{where}: must be a list of non-empty strings, got {value!r}")
    return tuple(value)


def _is_text(value: Any) -> bool:
    return isinstance(value, str) and bool(value.strip())


def _check_unique(values: list[str], field: str, path: str | Path) -> None:
    seen: set[str] = set()
    for value in values:
        if value in seen:
            raise DataError(f"{path}: {field} {value!r} appears twice")
        seen.add(value)
