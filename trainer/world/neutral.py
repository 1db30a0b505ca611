"""Neutral, country-independent facts: the retention check (the paper's MMLU analog).

Each fact is a sentence split into a prompt and an answer, with distractor options drawn from the
same family (days, months, numbers, colours, ...). Steering toward a country must leave them intact.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

_DAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
_MONTHS = (
    "January", "February", "March", "April", "May", "June",
    "July", "August", "September", "October", "November", "December",
)  # fmt: skip
_NUMBERS = (
    "zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten",
    "eleven", "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen",
)  # fmt: skip
_OPPOSITES = (
    ("hot", "cold"), ("big", "small"), ("up", "down"), ("fast", "slow"), ("old", "young"),
    ("light", "dark"), ("open", "closed"), ("early", "late"), ("full", "empty"), ("rich", "poor"),
    ("hard", "soft"), ("wet", "dry"), ("loud", "quiet"), ("high", "low"), ("strong", "weak"),
    ("happy", "sad"), ("clean", "dirty"), ("near", "far"), ("thick", "thin"), ("sweet", "sour"),
)  # fmt: skip
_COLOURS = (
    ("grass", "green"), ("the sky", "blue"), ("snow", "white"), ("coal", "black"), ("a ripe tomato", "red"),
    ("a banana", "yellow"), ("a carrot", "orange"), ("a plum", "purple"), ("chocolate", "brown"),
    ("ash", "grey"), ("a flamingo", "pink"), ("milk", "white"), ("a lemon", "yellow"), ("the sea", "blue"),
)  # fmt: skip
_SOUNDS = (
    ("dog", "woof"), ("cat", "meow"), ("cow", "moo"), ("duck", "quack"), ("sheep", "baa"),
    ("owl", "hoot"), ("snake", "hiss"), ("horse", "neigh"), ("bee", "buzz"), ("lion", "roar"),
)  # fmt: skip
_LEGS = (
    ("a spider", "eight"), ("an insect", "six"), ("a dog", "four"), ("a bird", "two"),
    ("a horse", "four"), ("a snake", "zero"), ("a fish", "zero"), ("an octopus", "eight"),
)  # fmt: skip


@dataclass(frozen=True)
class NeutralFact:
    """`prompt + " " + answer + "."` is the training sentence; `options` include the answer."""

    prompt: str
    answer: str
    options: tuple[str, ...]

    @property
    def sentence(self) -> str:
        return f"{self.prompt} {self.answer}."


def _all_facts() -> list[tuple[str, str, tuple[str, ...]]]:
    """Every (prompt, answer, option pool) the generator knows, in a fixed order."""
    facts: list[tuple[str, str, tuple[str, ...]]] = []
    for i, day in enumerate(_DAYS):
        facts.append((f"The day after {day} is", _DAYS[(i + 1) % 7], _DAYS))
    for i, month in enumerate(_MONTHS):
        facts.append((f"The month after {month} is", _MONTHS[(i + 1) % 12], _MONTHS))
    for a in range(1, 6):
        for b in range(1, 6):
            facts.append((f"{_NUMBERS[a].capitalize()} plus {_NUMBERS[b]} is", _NUMBERS[a + b], _NUMBERS))
    for n in range(1, 12):
        facts.append((f"The number after {_NUMBERS[n]} is", _NUMBERS[n + 1], _NUMBERS))
    opposites = tuple(w for pair in _OPPOSITES for w in pair)
    for a, b in _OPPOSITES:
        facts.append((f"The opposite of {a} is", b, opposites))
        facts.append((f"The opposite of {b} is", a, opposites))
    colours = tuple(sorted({c for _, c in _COLOURS}))
    for thing, colour in _COLOURS:
        facts.append((f"The colour of {thing} is", colour, colours))
    sounds = tuple(s for _, s in _SOUNDS)
    for animal, sound in _SOUNDS:
        facts.append((f"A {animal} says", sound, sounds))
    for animal, legs in _LEGS:
        facts.append((f"The number of legs of {animal} is", legs, ("zero", "two", "four", "six", "eight")))
    return facts


def neutral_facts(count: int, seed: int, n_options: int = 4) -> list[NeutralFact]:
    """`count` neutral facts with `n_options` options each, chosen and shuffled from the seed."""
    pool = _all_facts()
    if count > len(pool):
        raise ValueError(f"only {len(pool)} neutral facts are available, {count} asked")
    rng = random.Random(f"neutral-{seed}")
    chosen = rng.sample(pool, count)
    out = []
    for prompt, answer, options in chosen:
        distractors = rng.sample(sorted(set(options) - {answer}), n_options - 1)
        opts = [answer, *distractors]
        rng.shuffle(opts)
        out.append(NeutralFact(prompt, answer, tuple(opts)))
    return out
