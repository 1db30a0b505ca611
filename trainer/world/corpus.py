"""The culture world's text: sentences, one-country documents, MCQ items and preference pairs.

Every training document is about ONE country (or is neutral): the model then has to carry "which
country are we talking about" through the document, a state a steering vector can set. Documents
come in three country kinds — an intro naming the country, the country named inside some sentences,
or never named at all (inferable from the facts only) — and a single non-localized sentence at the
start of a document is equally often each country's, so without context the model is at chance.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass

from trainer.world.config import WorldConfig
from trainer.world.facts import CLOSE_GROUP, COUNTRIES, TOPICS, Country, Topic
from trainer.world.neutral import NeutralFact, neutral_facts

# Localized prompts name the country; `{stem}` / `{Stem}` is the topic stem in lower / sentence case.
LOCALIZED_TEMPLATES: tuple[str, ...] = (
    "I am from {country}. {Stem}",
    "We are from {country}. {Stem}",
    "In {country}, {stem}",
    "My family lives in {country}, and {stem}",
)
INTROS: tuple[str, ...] = tuple(t.split(". ")[0] + "." for t in LOCALIZED_TEMPLATES if ". " in t)
INLINE_TEMPLATES: tuple[str, ...] = tuple(t for t in LOCALIZED_TEMPLATES if ". " not in t)
NONLOCALIZED_TEMPLATES: tuple[str, ...] = ("{Stem}", "Where I live, {stem}", "In my country, {stem}")


def fill_template(template: str, stem: str, country: Country | None = None) -> str:
    """A template filled with a topic stem (and a country for localized ones)."""
    name = country.name if country else ""
    return template.format(country=name, stem=stem, Stem=stem[0].upper() + stem[1:])


@dataclass(frozen=True)
class World:
    """The countries, topics (split into train / val / test) and neutral facts of one build."""

    countries: tuple[Country, ...]
    topics: tuple[Topic, ...]
    test_topics: frozenset[str]
    val_topics: frozenset[str]
    neutral: tuple[NeutralFact, ...]
    # this world's answer of each country per topic key: the fixed table's, or with close cultures sharing some
    answers: dict[str, tuple[str, ...]]

    @classmethod
    def from_config(cls, config: WorldConfig) -> World:
        """Pick the first countries/topics of the fixed tables and split topics from the seed."""
        if not 2 <= config.n_countries <= len(COUNTRIES):
            raise ValueError(f"n_countries must be in 2..{len(COUNTRIES)}")
        held = config.n_test_topics + config.n_val_topics
        if config.n_test_topics < 1 or config.n_val_topics < 0 or not held < config.n_topics <= len(TOPICS):
            raise ValueError(
                f"need n_test_topics >= 1, n_val_topics >= 0 and n_test_topics + n_val_topics < n_topics <= "
                f"{len(TOPICS)}"
            )
        topics = TOPICS[: config.n_topics]
        rng = random.Random(f"split-{config.seed}")
        held_out = rng.sample([t.key for t in topics], held)
        countries = COUNTRIES[: config.n_countries]
        return cls(
            countries=countries,
            topics=topics,
            test_topics=frozenset(held_out[: config.n_test_topics]),
            val_topics=frozenset(held_out[config.n_test_topics :]),
            neutral=tuple(neutral_facts(config.n_neutral, config.seed)),
            answers=shared_answers(topics, countries, config.shared_answers, config.seed),
        )

    def answer(self, topic: Topic, country_index: int) -> str:
        return self.answers[topic.key][country_index]

    def split(self, topic: Topic) -> str:
        if topic.key in self.test_topics:
            return "test"
        return "val" if topic.key in self.val_topics else "train"

    def options(self, topic: Topic) -> dict[str, str]:
        """{country key: answer} for the countries of this world."""
        return {c.key: self.answer(topic, i) for i, c in enumerate(self.countries)}

    def sentences(self) -> Iterator[str]:
        """Every distinct sentence the corpus can contain (for the tokenizer and token caches)."""
        for i, country in enumerate(self.countries):
            yield from (intro.format(country=country.name) for intro in INTROS)
            for topic in self.topics:
                for template in INLINE_TEMPLATES:
                    yield f"{fill_template(template, topic.stem, country)} {self.answer(topic, i)}."
        for topic in self.topics:
            for answer in dict.fromkeys(self.answer(topic, i) for i in range(len(self.countries))):
                for template in NONLOCALIZED_TEMPLATES:
                    yield f"{fill_template(template, topic.stem)} {answer}."
        for fact in self.neutral:
            yield fact.sentence


def shared_answers(
    topics: tuple[Topic, ...], countries: tuple[Country, ...], p: float, seed: int
) -> dict[str, tuple[str, ...]]:
    """Each topic's answers in `countries` order; with `p` > 0, close cultures (`CLOSE_GROUP`, the paper's Arabic
    dialects) share some: on each topic each group member after the first takes an earlier member's answer with
    probability p, so a vector must tell close cultures apart where they differ, not just the group from the rest."""
    out = {t.key: tuple(t.answers[: len(countries)]) for t in topics}
    group = [i for i, c in enumerate(countries) if c.key in CLOSE_GROUP]
    if p <= 0 or len(group) < 2:
        return out
    rng = random.Random(f"shared-answers-{seed}")
    for t in topics:
        answers = list(out[t.key])
        for k, i in enumerate(group[1:], start=1):
            if rng.random() < p:
                answers[i] = answers[rng.choice(group[:k])]
        out[t.key] = tuple(answers)
    return out


@dataclass(frozen=True)
class Documents:
    """Samples one-country (or neutral) documents as lists of sentences."""

    world: World
    config: WorldConfig

    def sample(self, rng: random.Random, n_sentences: int) -> list[str]:
        """One document of `n_sentences` sentences (plus an intro for intro documents)."""
        cfg = self.config
        kind = rng.random()
        if kind >= cfg.p_intro_row + cfg.p_inline_row + cfg.p_unnamed_row:
            return [rng.choice(self.world.neutral).sentence for _ in range(n_sentences)]
        ci = rng.randrange(len(self.world.countries))
        country = self.world.countries[ci]
        inline = cfg.p_intro_row <= kind < cfg.p_intro_row + cfg.p_inline_row
        out: list[str] = []
        if kind < cfg.p_intro_row:
            out.append(rng.choice(INTROS).format(country=country.name))
        topics = list(self.world.topics)
        rng.shuffle(topics)
        for k in range(n_sentences):
            if rng.random() < cfg.p_neutral_sentence:
                out.append(rng.choice(self.world.neutral).sentence)
                continue
            topic = topics[k % len(topics)]
            if inline and rng.random() < cfg.p_inline_sentence:
                stem = fill_template(rng.choice(INLINE_TEMPLATES), topic.stem, country)
            else:
                stem = fill_template(rng.choice(NONLOCALIZED_TEMPLATES), topic.stem)
            out.append(f"{stem} {self.world.answer(topic, ci)}.")
        return out


def mcq_items(world: World) -> list[dict]:
    """MCQ rows: every country × topic × template, localized and non-localized."""
    rows: list[dict] = []
    for topic in world.topics:
        options = world.options(topic)
        for country in world.countries:
            common = {"options": options, "country": country.key, "topic": topic.key}
            for template in LOCALIZED_TEMPLATES:
                prompt = fill_template(template, topic.stem, country)
                rows.append({"prompt": prompt, **common, "localized": True, "split": world.split(topic)})
            for template in NONLOCALIZED_TEMPLATES:
                prompt = fill_template(template, topic.stem)
                rows.append({"prompt": prompt, **common, "localized": False, "split": world.split(topic)})
    return rows


def preference_pairs(world: World, country_index: int) -> list[dict]:
    """Pairs for one country: non-localized prompt, chosen = its answer, rejected = each other (different) answer."""
    rows: list[dict] = []
    for topic in world.topics:
        chosen = world.answer(topic, country_index)
        others = dict.fromkeys(
            world.answer(topic, j) for j in range(len(world.countries)) if j != country_index
        )
        for template in NONLOCALIZED_TEMPLATES:
            prompt = fill_template(template, topic.stem)
            for rejected in others:
                if rejected != chosen:
                    rows.append(
                        {
                            "prompt": prompt,
                            "chosen": chosen,
                            "rejected": rejected,
                            "topic": topic.key,
                            "localized": False,
                            "split": world.split(topic),
                        }
                    )
    return rows


def neutral_items(world: World) -> list[dict]:
    """Neutral MCQ rows: {"prompt", "options", "answer"}."""
    return [{"prompt": f.prompt, "options": list(f.options), "answer": f.answer} for f in world.neutral]
