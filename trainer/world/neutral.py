"""Neutral, country-independent facts: the retention check (the paper's MMLU analog).

Each fact is a sentence split into a prompt and an answer, with distractor options drawn from the
same family (days, months, numbers, letters, colours, ...). Steering toward a country must leave
them intact. The generator knows about 700 facts in 20 templates over 9 answer kinds, so retention
can be measured on hundreds of held-out facts (one fact is then a fraction of a point).
"""

from __future__ import annotations

import random
import string
from collections.abc import Iterator
from dataclasses import dataclass

_DAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
_MONTHS = (
    "January", "February", "March", "April", "May", "June",
    "July", "August", "September", "October", "November", "December",
)  # fmt: skip
_SEASONS = ("spring", "summer", "autumn", "winter")
_NUMBERS = (
    "zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten",
    "eleven", "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen",
)  # fmt: skip
_LETTERS = tuple(string.ascii_uppercase)
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
_SIDES = (("a triangle", "three"), ("a square", "four"), ("a pentagon", "five"), ("a hexagon", "six"),
          ("an octagon", "eight"))  # fmt: skip
_PLURALS = (
    ("mouse", "mice"), ("goose", "geese"), ("child", "children"), ("foot", "feet"), ("tooth", "teeth"),
    ("man", "men"), ("woman", "women"), ("ox", "oxen"), ("leaf", "leaves"), ("knife", "knives"),
    ("wolf", "wolves"), ("box", "boxes"), ("city", "cities"), ("baby", "babies"), ("bus", "buses"),
    ("potato", "potatoes"), ("sheep", "sheep"), ("fish", "fish"), ("cactus", "cacti"), ("half", "halves"),
)  # fmt: skip
_YOUNG = (
    ("cat", "kitten"), ("dog", "puppy"), ("cow", "calf"), ("sheep", "lamb"), ("horse", "foal"),
    ("goat", "kid"), ("duck", "duckling"), ("frog", "tadpole"), ("bear", "cub"), ("pig", "piglet"),
    ("goose", "gosling"), ("swan", "cygnet"),
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


Pool = tuple[str, ...]


def _cycles() -> Iterator[tuple[str, str, Pool]]:
    """Successor and predecessor of days, months, seasons and letters."""
    for kind, words in (("day", _DAYS), ("month", _MONTHS), ("season", _SEASONS)):
        for i, word in enumerate(words):
            yield f"The {kind} after {word} is", words[(i + 1) % len(words)], words
            yield f"The {kind} before {word} is", words[(i - 1) % len(words)], words
    for i, letter in enumerate(_LETTERS):
        if i + 1 < len(_LETTERS):
            yield f"The letter after {letter} is", _LETTERS[i + 1], _LETTERS
        if i > 0:
            yield f"The letter before {letter} is", _LETTERS[i - 1], _LETTERS


def _arithmetic() -> Iterator[tuple[str, str, Pool]]:
    """Sums, differences, products, doubles, halves, neighbours and comparisons of small numbers."""
    n = _NUMBERS
    for a in range(1, 10):
        for b in range(1, 10):
            yield f"{n[a].capitalize()} plus {n[b]} is", n[a + b], n
    for a in range(2, 19):
        for b in range(1, min(9, a - 1) + 1):
            yield f"{n[a].capitalize()} minus {n[b]} is", n[a - b], n
    for a in range(2, 10):
        for b in range(2, 10):
            if a * b < len(n):
                yield f"{n[a].capitalize()} times {n[b]} is", n[a * b], n
    for a in range(1, 10):
        yield f"Double {n[a]} is", n[2 * a], n
        yield f"Half of {n[2 * a]} is", n[a], n
    for a in range(0, 18):
        yield f"The number after {n[a]} is", n[a + 1], n
        yield f"The number before {n[a + 1]} is", n[a], n
    for a in range(1, 16):
        for b in range(a + 1, 16):
            x, y = (a, b) if (a + b) % 2 else (b, a)  # the answer is first in half of them
            yield f"The larger of {n[x]} and {n[y]} is", n[b], n
            yield f"The smaller of {n[y]} and {n[x]} is", n[a], n


def _words() -> Iterator[tuple[str, str, Pool]]:
    """Opposites, colours, animal sounds and young, legs, sides and irregular plurals."""
    opposites = tuple(w for pair in _OPPOSITES for w in pair)
    for a, b in _OPPOSITES:
        yield f"The opposite of {a} is", b, opposites
        yield f"The opposite of {b} is", a, opposites
    colours = tuple(sorted({c for _, c in _COLOURS}))
    for thing, colour in _COLOURS:
        yield f"The colour of {thing} is", colour, colours
    sounds = tuple(s for _, s in _SOUNDS)
    for animal, sound in _SOUNDS:
        yield f"A {animal} says", sound, sounds
    young = tuple(y for _, y in _YOUNG)
    for animal, baby in _YOUNG:
        yield f"A young {animal} is called a", baby, young
    counts = ("zero", "two", "three", "four", "five", "six", "eight")
    for animal, legs in _LEGS:
        yield f"The number of legs of {animal} is", legs, counts
    for shape, sides in _SIDES:
        yield f"The number of sides of {shape} is", sides, counts
    plurals = tuple(p for _, p in _PLURALS)
    for word, plural in _PLURALS:
        yield f"The plural of {word} is", plural, plurals


def _all_facts() -> list[tuple[str, str, Pool]]:
    """Every (prompt, answer, option pool) the generator knows, in a fixed order, each prompt once."""
    facts = [*_cycles(), *_arithmetic(), *_words()]
    prompts = [p for p, _, _ in facts]
    if len(set(prompts)) != len(prompts):
        raise ValueError("neutral fact prompts must be unique")
    return facts


def neutral_pool_size() -> int:
    """How many distinct neutral facts `neutral_facts` can draw from."""
    return len(_all_facts())


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
