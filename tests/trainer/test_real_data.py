"""The real model's evaluation data: the shipped files load and keep their promises, and the validating
loaders reject malformed records with an error naming the row and field."""

from __future__ import annotations

import json

import pytest

from trainer.data import DataError
from trainer.real_data import load_culture_items, load_facts
from trainer.world.facts import COUNTRIES, TOPICS

TOPIC_ANSWERS = {a.lower() for t in TOPICS for a in t.answers}


def test_shipped_data_loads_with_enough_records():
    facts, items = load_facts(), load_culture_items()
    assert len(facts) >= 600
    assert len(items) >= 48
    assert {f.category for f in facts} == {
        "geography",
        "science",
        "history",
        "language",
        "common_sense",
        "general",
    }
    assert all(len(item.answers) == len(COUNTRIES) for item in items)


def test_culture_items_stay_outside_the_topic_table():
    topic_stems = {t.stem.lower() for t in TOPICS}
    topic_answer_sets = {frozenset(a.lower() for a in t.answers) for t in TOPICS}
    names = [c.name.lower().removeprefix("the ") for c in COUNTRIES]
    for item in load_culture_items():
        assert item.stem.lower() not in topic_stems, item.key
        assert frozenset(a.lower() for a in item.answers) not in topic_answer_sets, item.key
        assert not any(name in item.stem.lower() for name in names), item.key
        assert not TOPIC_ANSWERS & {a.lower() for a in item.answers}, item.key


def test_no_fact_option_is_a_topic_answer():
    """Steering toward a country must not move a retention fact just because an option is that country's answer."""
    for fact in load_facts():
        assert not TOPIC_ANSWERS & {o.lower() for o in fact.options}, fact.prompt


GOOD_FACT = {
    "prompt": "The capital of France is",
    "options": ["Paris", "Oslo", "Rome", "Lima"],
    "answer": 0,
    "category": "geography",
}
GOOD_ITEM = {
    "key": "club",
    "stem": "Our club is",
    "answers": [f"club {c.key}" for c in COUNTRIES],
    "category": "sport",
}


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        ([{**GOOD_FACT, "options": ["Paris", "Oslo", "Rome"]}], "options must be 4 distinct"),
        ([{**GOOD_FACT, "options": ["Paris", "Oslo", "Rome", "Oslo"]}], "options must be 4 distinct"),
        ([{**GOOD_FACT, "answer": 4}], "answer must be an option index"),
        ([{**GOOD_FACT, "answer": True}], "answer must be an option index"),
        ([{**GOOD_FACT, "prompt": " "}], "prompt must be a non-empty string"),
        ([{k: v for k, v in GOOD_FACT.items() if k != "category"}], "fields must be"),
        ([GOOD_FACT, GOOD_FACT], "appears twice"),
    ],
)
def test_load_facts_rejects_malformed_records(tmp_path, rows, message):
    assert len(load_facts(_write(tmp_path, [GOOD_FACT]))) == 1
    with pytest.raises(DataError, match=message):
        load_facts(_write(tmp_path, rows))


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        ([{**GOOD_ITEM, "answers": GOOD_ITEM["answers"][:-1]}], "answers must be 10 distinct"),
        ([{**GOOD_ITEM, "answers": ["same"] * len(COUNTRIES)}], "answers must be 10 distinct"),
        ([{**GOOD_ITEM, "answers": "Raja Casablanca"}], "answers: must be a list"),
        ([GOOD_ITEM, {**GOOD_ITEM, "stem": "Our other club is"}], "key 'club' appears twice"),
    ],
)
def test_load_culture_items_rejects_malformed_records(tmp_path, rows, message):
    assert len(load_culture_items(_write(tmp_path, [GOOD_ITEM]))) == 1
    with pytest.raises(DataError, match=message):
        load_culture_items(_write(tmp_path, rows))


def _write(tmp_path, rows):
    path = tmp_path / f"data{len(list(tmp_path.iterdir()))}.json"
    path.write_text(json.dumps(rows))
    return path
