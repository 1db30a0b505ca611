"""Steered model ids: `<base>:<vector>[@<strength>][+<vector>[@<strength>]...]` names a steered model.

The convention of vLLM's LoRA adapters and OpenRouter's variants, so that a tool that can only pick a model (an
lm-eval task, a LangChain chain) can steer. `<base>` is the served model id or an alias of it (the `--model`
value as given, e.g. a hub id); a vector is any `steer` name (catalog name, `sae:<feature>`,
`sae:<layer>:<feature>`); a missing strength is the vector's default strength. Ids never contain `,` or `=`
(lm-eval splits its arguments on them).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

SEPARATOR = ":"
JOIN = "+"
AT = "@"
FORBIDDEN = frozenset(",= \t\n:@+")  # not in a base id: they would make ids ambiguous or unusable in lm-eval


class ModelIdError(ValueError):
    """A model id that names this server's base model but whose steering part is malformed."""


@dataclass(frozen=True)
class ModelId:
    """A parsed model id: the base it names and its steering terms (strength None = the vector's default)."""

    base: str
    terms: tuple[tuple[str, float | None], ...] = ()

    @property
    def steered(self) -> bool:
        return bool(self.terms)


def check_base_id(name: str) -> str:
    """`name` if it can be a base model id (none of `FORBIDDEN`), else ValueError."""
    bad = sorted(set(name) & FORBIDDEN)
    if not name or bad:
        raise ValueError(f"a served model id must be non-empty and free of {' '.join(repr(c) for c in bad)}")
    return name


def base_id_from(text: str) -> str:
    """A usable base id made from a folder name: forbidden characters become `-`."""
    return "".join("-" if c in FORBIDDEN else c for c in text) or "model"


def parse_model_id(model: str, base: str, aliases: Iterable[str] = ()) -> ModelId | None:
    """The parsed id if `model` names `base` (or an alias), steered or not; None if it names another model."""
    for name in (base, *aliases):
        if model == name:
            return ModelId(base)
        if model.startswith(name + SEPARATOR):
            return ModelId(base, _terms(model[len(name) + 1 :]))
    return None


def _terms(spec: str) -> tuple[tuple[str, float | None], ...]:
    terms: list[tuple[str, float | None]] = []
    seen: set[str] = set()
    for part in spec.split(JOIN):
        name, at, value = part.rpartition(AT) if AT in part else (part, "", "")
        if not name:
            raise ModelIdError(f"empty vector name in {spec!r}: write <vector>[@<strength>], joined by '+'")
        strength: float | None = None
        if at:
            try:
                strength = float(value)
            except ValueError:
                raise ModelIdError(f"strength {value!r} of {name!r} is not a number") from None
            if not math.isfinite(strength):
                raise ModelIdError(f"strength of {name!r} must be a finite number, got {value!r}")
        if name in seen:
            raise ModelIdError(f"{name!r} appears twice; give each vector once")
        seen.add(name)
        terms.append((name, strength))
    return tuple(terms)


def steered_id(base: str, vector: str, strength: float | None = None) -> str:
    """The id of `base` steered by one vector (at `strength`, or its default when None)."""
    return f"{base}{SEPARATOR}{vector}" + ("" if strength is None else f"{AT}{strength:g}")
