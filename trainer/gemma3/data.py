"""The real-model world's data, in the culture world's file formats (so `steer demo report` reads it as is).

- culture MCQ and preference pairs: the world's topic table (`trainer.world.facts`, real customs) with its
  train / val / test topic split and its templates, which already read as text a base model continues
  ("I am from Morocco. At a wedding we eat" / "In my country, at a wedding we eat");
- retention: the hand-written general-knowledge facts (`trainer.real_data.load_facts`), kept only where the
  unsteered model picks the right option (a fact it does not know cannot measure what steering takes away);
- generalization: the cultural items outside the topic table (`load_culture_items`) as MCQ rows of split
  `general` (non-localized, and localized with the topic table's templates), one answer per country, never
  trained on.

Every MCQ row is calibrated (`"calibrate": true`, `trainer.eval.items.load_mcq`): scored relative to the
options' mean log-probability after every country's localized prompts of its topic. Scored raw, the unsteered
model's Anglo prior and short frequent answers win even when the country is named (the first quick build scored
0 % localized for Morocco); calibrated, naming the country moves the pick, which is the range a steering vector
can be measured in (docs/real-model-results.md).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any

from trainer.real_data import load_culture_items, load_facts
from trainer.world.config import WorldConfig
from trainer.world.corpus import LOCALIZED_TEMPLATES, World, fill_template, mcq_items, preference_pairs
from trainer.world.facts import COUNTRIES
from vectors.scoring import Question, predict_options

GENERAL_SPLIT = "general"


@dataclass(frozen=True)
class CultureData:
    mcq: list[dict[str, Any]]
    pairs: dict[str, list[dict[str, Any]]]  # country key -> preference rows
    splits: dict[str, list[str]]  # split -> topic keys


def culture_data(seed: int) -> CultureData:
    """The topic table's MCQ rows and preference pairs, topics split as the culture world splits them."""
    world = World.from_config(WorldConfig(seed=seed))
    pairs = {c.key: preference_pairs(world, i) for i, c in enumerate(world.countries)}
    splits = {s: [t.key for t in world.topics if world.split(t) == s] for s in ("train", "val", "test")}
    return CultureData([{**row, "calibrate": True} for row in mcq_items(world)], pairs, splits)


@dataclass(frozen=True)
class KnownFacts:
    rows: list[dict[str, Any]]  # neutral.jsonl rows: {prompt, options, answer (text)}
    total: int
    by_category: dict[str, tuple[int, int]]  # category -> (kept, total)


def known_facts(model: Any, tokenizer: Any) -> KnownFacts:
    """The real facts the unsteered model answers right (log-likelihood MCQ over four options)."""
    facts = load_facts()
    picks = predict_options(model, tokenizer, [Question(f.prompt, f.options, f.answer) for f in facts])
    kept = [f for f, p in zip(facts, picks, strict=True) if p == f.answer]
    totals = Counter(f.category for f in facts)
    hits = Counter(f.category for f in kept)
    return KnownFacts(
        rows=[{"prompt": f.prompt, "options": list(f.options), "answer": f.options[f.answer]} for f in kept],
        total=len(facts),
        by_category={c: (hits[c], totals[c]) for c in sorted(totals)},
    )


def general_rows() -> list[dict[str, Any]]:
    """MCQ rows of the cultural items, per country (that country's answer gold): the stem as it is
    (non-localized) and in each localized template, all calibrated."""
    rows = []
    for item in load_culture_items():
        options = {c.key: a for c, a in zip(COUNTRIES, item.answers, strict=True)}
        stem = item.stem[0].lower() + item.stem[1:]
        for country in COUNTRIES:
            common = {"options": options, "country": country.key, "topic": item.key, "split": GENERAL_SPLIT}
            rows.append({"prompt": item.stem, **common, "localized": False, "calibrate": True})
            for template in LOCALIZED_TEMPLATES:
                prompt = fill_template(template, stem, country)
                rows.append({"prompt": prompt, **common, "localized": True, "calibrate": True})
    return rows
