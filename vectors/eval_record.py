"""`EvalRecord`: what `steer eval` writes into a vector's `eval` metadata, and what the catalog reads back.

One typed record instead of nested string-keyed dicts: the trainer builds it, `to_dict` stores it (per-strength
tables keyed by the strength as text, e.g. ``{"retention": {"0": 1.0, "1": 0.99}}``, so the playground can plot
them), `from_dict` reads it (records written before `selected_on` / `retention_facts` existed read with those
fields empty), and `headline` is the one-line view `GET /vectors` shows at the vector's default strength.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

Table = dict[float, float]


def _key(strength: float) -> str:
    return f"{strength:g}"


def _table_out(table: Mapping[float, float]) -> dict[str, float]:
    return {_key(s): round(v, 4) for s, v in table.items()}


def _table_in(raw: Any, name: str) -> Table:
    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        raise ValueError(f"eval record: {name} must be a {{strength: number}} table")
    try:
        return {float(k): float(v) for k, v in raw.items()}
    except (TypeError, ValueError):
        raise ValueError(f"eval record: {name} must be a {{strength: number}} table") from None


@dataclass(frozen=True)
class RetentionFacts:
    """The neutral facts retention was measured on: how many, how many each strength lost (answered right
    unsteered, wrong steered), and the 95 % Wilson interval of the steered accuracy."""

    n: int
    lost: dict[float, int] = field(default_factory=dict)
    ci95: dict[float, tuple[float, float]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "n": self.n,
            "lost": {_key(s): k for s, k in self.lost.items()},
            "ci95": {_key(s): [round(lo, 4), round(hi, 4)] for s, (lo, hi) in self.ci95.items()},
        }

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> RetentionFacts:
        try:
            return cls(
                n=int(raw["n"]),
                lost={float(k): int(v) for k, v in raw.get("lost", {}).items()},
                ci95={float(k): (float(v[0]), float(v[1])) for k, v in raw.get("ci95", {}).items()},
            )
        except (KeyError, TypeError, ValueError, IndexError):
            raise ValueError("eval record: retention_facts needs n, lost {strength: count}, ci95") from None


@dataclass(frozen=True)
class EvalRecord:
    """Headline numbers of one vector's evaluation; accuracies on `data_split` topics (held out), the default
    strength chosen on `selected_on` topics (validation, when the data has them)."""

    target: str
    data_split: str
    selected_on: str
    strengths: tuple[float, ...]
    heldout_accuracy: Table
    heldout_nonlocalized_accuracy: Table
    selection_accuracy: Table = field(default_factory=dict)
    retention: Table = field(default_factory=dict)  # empty: no neutral facts given
    retention_facts: RetentionFacts | None = None
    unsteered_heldout_accuracy: float | None = None
    unsteered_retention: float | None = None
    trained_strength: float | None = None
    evaluated: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "target": self.target,
            "data_split": self.data_split,
            "selected_on": self.selected_on,
            "strengths": list(self.strengths),
            "heldout_accuracy": _table_out(self.heldout_accuracy),
            "heldout_nonlocalized_accuracy": _table_out(self.heldout_nonlocalized_accuracy),
            "selection_accuracy": _table_out(self.selection_accuracy),
            "retention": _table_out(self.retention) if self.retention else None,
            "retention_facts": self.retention_facts.to_dict() if self.retention_facts else None,
            "unsteered": {
                "heldout_accuracy": self.unsteered_heldout_accuracy,
                "retention": self.unsteered_retention,
            },
            "trained_strength": self.trained_strength,
            "evaluated": self.evaluated,
        }

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> EvalRecord:
        """The record of `to_dict` (or of an older `steer eval`); ValueError names what is malformed."""
        if not isinstance(raw, Mapping) or "target" not in raw or "data_split" not in raw:
            raise ValueError("eval record: needs at least target and data_split")
        unsteered = raw.get("unsteered") or {}
        facts = raw.get("retention_facts")
        try:
            strengths = tuple(float(s) for s in raw.get("strengths", ()))
        except (TypeError, ValueError):
            raise ValueError("eval record: strengths must be numbers") from None
        return cls(
            target=str(raw["target"]),
            data_split=str(raw["data_split"]),
            selected_on=str(raw.get("selected_on", raw["data_split"])),
            strengths=strengths,
            heldout_accuracy=_table_in(raw.get("heldout_accuracy"), "heldout_accuracy"),
            heldout_nonlocalized_accuracy=_table_in(
                raw.get("heldout_nonlocalized_accuracy"), "heldout_nonlocalized_accuracy"
            ),
            selection_accuracy=_table_in(raw.get("selection_accuracy"), "selection_accuracy"),
            retention=_table_in(raw.get("retention"), "retention"),
            retention_facts=RetentionFacts.from_dict(facts) if facts else None,
            unsteered_heldout_accuracy=_number(unsteered.get("heldout_accuracy")),
            unsteered_retention=_number(unsteered.get("retention")),
            trained_strength=_number(raw.get("trained_strength")),
            evaluated=raw.get("evaluated"),
        )

    def headline(self, strength: float | None = None) -> dict[str, Any]:
        """Scalars for the catalog: target, splits, unsteered baselines and each table read at `strength`
        (e.g. ``retention@1``, ``retention_low@1``), for a strength the sweep measured."""
        out: dict[str, Any] = {
            "target": self.target,
            "data_split": self.data_split,
            "selected_on": self.selected_on,
            "unsteered_heldout_accuracy": self.unsteered_heldout_accuracy,
            "unsteered_retention": self.unsteered_retention,
        }
        if self.trained_strength is not None:
            out["trained_strength"] = self.trained_strength
        if self.retention_facts is not None:
            out["retention_facts"] = self.retention_facts.n
        if self.evaluated:
            out["evaluated"] = self.evaluated
        if strength is None:
            return out
        at = _key(strength)
        tables = {
            "heldout_accuracy": self.heldout_accuracy,
            "heldout_nonlocalized_accuracy": self.heldout_nonlocalized_accuracy,
            "selection_accuracy": self.selection_accuracy,
            "retention": self.retention,
        }
        for name, table in tables.items():
            if strength in table:
                out[f"{name}@{at}"] = round(table[strength], 4)
        facts = self.retention_facts
        if facts is not None and strength in facts.ci95:
            out[f"retention_low@{at}"], out[f"retention_high@{at}"] = (
                round(x, 4) for x in facts.ci95[strength]
            )
            out[f"facts_lost@{at}"] = facts.lost.get(strength)
        return out


def _number(value: Any) -> float | None:
    return None if value is None else float(value)


__all__ = ["EvalRecord", "RetentionFacts"]
