"""The SAE's training text: real English prose that every machine has offline, without a hub.

CPython ships it: the language reference's topics (`pydoc_data.topics`, what `help("if")` prints) and the
docstrings of the standard library's modules, classes and functions. It is technical English rather than
news or fiction, but it is real text written by people, the same on every machine with the same Python, and
needs no download; the model's own samples would be slower to make (its 262k-vocabulary head) and would only
echo what it already prefers.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import random
import sys
import warnings
from collections.abc import Iterator
from typing import Any

import torch

# Modules whose import has side effects (a GUI, `this` prints a poem) or is slow: skipped.
_SKIP = ("antigravity", "this", "idlelib", "tkinter", "turtle", "turtledemo", "test", "lib2to3", "ensurepip")


def _paragraphs(text: str) -> Iterator[str]:
    for block in text.split("\n\n"):
        line = " ".join(block.split())
        if len(line) >= 80 and sum(c.isalpha() for c in line) > 0.6 * len(line):  # prose, not tables or code
            yield line


def _stdlib_docstrings() -> Iterator[str]:
    names = sorted(getattr(sys, "stdlib_module_names", ()))
    for name in names:
        if name.startswith("_") or name in _SKIP:
            continue
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                module = importlib.import_module(name)
        except Exception:  # platform modules (winreg, ...) and optional C extensions
            continue
        yield inspect.getdoc(module) or ""
        for _, obj in sorted(vars(module).items()):
            if getattr(obj, "__module__", None) == name and (inspect.isclass(obj) or inspect.isfunction(obj)):
                yield inspect.getdoc(obj) or ""
        if hasattr(module, "__path__"):  # packages: their documented submodules too (email, json, ...)
            for sub in pkgutil.iter_modules(module.__path__):
                if sub.name.startswith("_"):
                    continue
                try:
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore")
                        yield inspect.getdoc(importlib.import_module(f"{name}.{sub.name}")) or ""
                except Exception:
                    continue


def paragraphs() -> list[str]:
    """Every distinct prose paragraph of the corpus, in a fixed order."""
    from pydoc_data.topics import topics

    texts: list[str] = [topics[k] for k in sorted(topics)]
    texts.extend(_stdlib_docstrings())
    return list(dict.fromkeys(p for text in texts for p in _paragraphs(text)))


def token_rows(tokenizer: Any, texts: list[str], context: int, n_rows: int, seed: int) -> torch.Tensor:
    """`n_rows` rows of `context` tokens: BOS, then paragraphs in a shuffled order, packed end to end
    (wrapping around the corpus when it is shorter than asked)."""
    order = list(range(len(texts)))
    random.Random(seed).shuffle(order)
    stream: list[int] = []
    rows: list[list[int]] = []
    i = 0
    while len(rows) < n_rows:
        while len(stream) < context - 1:
            stream.extend(tokenizer.encode(texts[order[i % len(order)]] + "\n\n", add_special_tokens=False))
            i += 1
        rows.append([tokenizer.bos_token_id, *stream[: context - 1]])
        stream = stream[context - 1 :]
    return torch.tensor(rows)


def sae_rows(tokenizer: Any, context: int, eval_rows: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The SAE's token rows: every tenth paragraph held out (`eval_rows` rows of them, for FVE), the rest packed
    into as many rows as their tokens fill (one pass over the training text)."""
    texts = paragraphs()
    held_out, train = texts[::10], [t for i, t in enumerate(texts) if i % 10]
    corpus_tokens = sum(len(tokenizer.encode(t, add_special_tokens=False)) for t in train)
    rows = token_rows(tokenizer, train, context, corpus_tokens // (context - 1), seed)
    return rows, token_rows(tokenizer, held_out, context, eval_rows, seed + 1)
