"""The typed results of an evaluation: per strength (`StrengthEval`), per vector (`VectorEval`), the whole run
(`EvalReport`, which round-trips through `to_dict` / `from_dict`), and its strength-sweep plot.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from trainer.plots import plot_strength_panels
from vectors.eval_record import EvalRecord
from vectors.io import write_atomic


@dataclass(frozen=True)
class StrengthEval:
    """One vector at one strength: accuracy {split: {localized | nonlocalized | both}}, the paper's metrics per
    split, retention on the neutral facts and how many of them it lost (right unsteered, wrong steered)."""

    accuracy: dict[str, dict[str, float]]
    paper: dict[str, dict[str, float]]
    retention: float | None = None
    lost: int | None = None

    def acc(self, split: str, kind: str = "both") -> float:
        return self.accuracy.get(split, {}).get(kind, float("nan"))

    def to_dict(self) -> dict[str, Any]:
        return {
            "accuracy": self.accuracy,
            "paper": self.paper,
            "retention": self.retention,
            "lost": self.lost,
        }

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> StrengthEval:
        return cls(raw["accuracy"], raw["paper"], raw.get("retention"), raw.get("lost"))


@dataclass(frozen=True)
class VectorEval:
    """A vector's sweep, the strength range and default chosen from it, and the record written back."""

    name: str
    method: str
    target: str
    by_strength: dict[float, StrengthEval]
    strength_range: tuple[float, float]
    default_strength: float
    record: EvalRecord

    def to_dict(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "target": self.target,
            "by_strength": {_key(s): e.to_dict() for s, e in self.by_strength.items()},
            "strength_range": list(self.strength_range),
            "default_strength": self.default_strength,
            "headline": self.record.to_dict(),
        }

    @classmethod
    def from_dict(cls, name: str, raw: Mapping[str, Any]) -> VectorEval:
        return cls(
            name=name,
            method=raw["method"],
            target=raw["target"],
            by_strength={float(s): StrengthEval.from_dict(e) for s, e in raw["by_strength"].items()},
            strength_range=(float(raw["strength_range"][0]), float(raw["strength_range"][1])),
            default_strength=float(raw["default_strength"]),
            record=EvalRecord.from_dict(raw["headline"]),
        )


@dataclass(frozen=True)
class EvalReport:
    """Everything `steer eval` measured; `to_dict` is the JSON report."""

    strengths: list[float]
    alpha: float
    retention_facts: int
    unsteered_retention: float | None
    unsteered: dict[str, StrengthEval]  # per target country
    vectors: dict[str, VectorEval]

    def to_dict(self) -> dict[str, Any]:
        return {
            "strengths": self.strengths,
            "alpha": self.alpha,
            "unsteered": {
                "retention": self.unsteered_retention,
                "retention_facts": self.retention_facts,
                "countries": {c: e.to_dict() for c, e in self.unsteered.items()},
            },
            "vectors": {n: v.to_dict() for n, v in self.vectors.items()},
        }

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> EvalReport:
        """The report of `to_dict` (an evaluation run in another process)."""
        base = raw["unsteered"]
        return cls(
            strengths=[float(s) for s in raw["strengths"]],
            alpha=float(raw["alpha"]),
            retention_facts=int(base["retention_facts"]),
            unsteered_retention=base.get("retention"),
            unsteered={c: StrengthEval.from_dict(e) for c, e in base["countries"].items()},
            vectors={n: VectorEval.from_dict(n, v) for n, v in raw["vectors"].items()},
        )

    def merged(self, *others: EvalReport) -> EvalReport:
        """One report of evaluations of disjoint vectors on the same data (parts run side by side)."""
        unsteered, vectors = dict(self.unsteered), dict(self.vectors)
        for o in others:
            if (o.strengths, o.alpha, o.retention_facts) != (
                self.strengths,
                self.alpha,
                self.retention_facts,
            ):
                raise ValueError("eval reports to merge differ in strengths, alpha or neutral facts")
            unsteered |= o.unsteered
            vectors |= o.vectors
        return replace(self, unsteered=unsteered, vectors=vectors)

    def write(self, out: Path) -> None:
        """The JSON report at `out` and the strength-sweep PNG next to it."""
        write_atomic(out, json.dumps(self.to_dict(), indent=1).encode())
        sweep_plot(self, out.with_suffix(".png"))


def _key(s: float) -> str:
    return f"{s:g}"


def sweep_plot(report: EvalReport, path: Path) -> Path:
    panels: dict[str, dict[str, dict[float, float]]] = {
        "held-out non-localized accuracy": {},
        "retention": {},
    }
    for name, entry in report.vectors.items():
        panels["held-out non-localized accuracy"][name] = entry.record.heldout_nonlocalized_accuracy
        if entry.record.retention:
            panels["retention"][name] = entry.record.retention
    if not panels["retention"]:
        del panels["retention"]
    return plot_strength_panels(panels, path)
