"""The demo report's numbers as types: what `report.summarise` computes, `render_markdown` and `steer demo
compare` read, and `report.json` holds (`DemoReport.to_dict` / `from_dict`, the JSON keys unchanged).

Tables stay mappings keyed by data (method, country, strength label, kind of item); what has a fixed set of
names is a field.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from vectors.training_record import Effect

# method (or "base") -> country (or "mean") -> kind ("localized", "nonlocalized", "both", ...; "retention", "lost")
Table = dict[str, dict[str, dict[str, float]]]
# method -> country -> a value
PerCountry = dict[str, dict[str, Any]]


@dataclass(frozen=True)
class ServedVector:
    """A vector as the server serves it: default strength, range, and retention there (95 % interval)."""

    default_strength: float
    strength_range: list[float]
    retention: float | None
    retention_ci95: list[float] | None
    facts_lost: int | None


@dataclass(frozen=True)
class Retention:
    """Retention on the held-out neutral facts: unsteered, how many facts, and per method, country and strength
    label (`f"{s:g}"`)."""

    unsteered: float | None
    facts: int | None
    by_method: dict[str, dict[str, dict[str, float | None]]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"unsteered": self.unsteered, "facts": self.facts, **self.by_method}

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> Retention:
        by_method = {k: v for k, v in raw.items() if k not in ("unsteered", "facts")}
        return cls(raw.get("unsteered"), raw.get("facts"), by_method)


# the JSON name of a target whose name is not an identifier
_TARGET_KEYS = {"yapo_gain_points_best_05_to_2": "yapo_gain_points_best_0.5_to_2"}


@dataclass(frozen=True)
class Targets:
    """The trainer issues' targets, read at each YaPO vector's own default strength (what the server serves);
    the YaPO ones only when YaPO ran, the convergence one only when YaPO and BiPO both did."""

    nonlocalized_at_default_mean: dict[str, float]
    yapo_default_strengths: dict[str, float] | None = None
    yapo_gain_points_at_default: float | None = None
    yapo_gain_ge_30: bool | None = None
    yapo_retention_drop_points_at_default: float | None = None
    yapo_retention_mean_drop_points_at_default: float | None = None
    yapo_retention_ok: bool | None = None
    yapo_ge_bipo_at_default: bool | None = None
    yapo_ge_caa_at_default: bool | None = None
    yapo_gain_points_best_05_to_2: float | None = None
    yapo_faster_than_bipo: bool | None = None

    def to_dict(self) -> dict[str, Any]:
        """The targets that apply (None ones left out), under their JSON names."""
        out = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if value is not None:
                out[_TARGET_KEYS.get(f.name, f.name)] = value
        return out

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> Targets:
        names = {v: k for k, v in _TARGET_KEYS.items()}
        return cls(**{names.get(k, k): v for k, v in raw.items()})


@dataclass
class DemoReport:
    """Table-7-like numbers of one demo run (each vector at its default strength, at 1, at the best of
    [0.5, 2]), retention, RCA / PNLG, convergence and the targets; `seconds`, `config` and `plots` are added
    once the run has them."""

    cpu: str  # training runs differ between CPU kinds: the report says where it was made
    countries: list[str]
    split: str  # the topics scored
    selected_on: str  # the topics strengths are chosen on
    strengths: list[float]
    table7: dict[str, Table]  # view ("default", "strength_1", "best_0.5_to_2") -> table
    table_strengths: dict[str, PerCountry]  # view -> method -> country -> the strength read
    served: dict[str, dict[str, ServedVector]]  # method -> country
    selection_nonlocalized_at_default: PerCountry  # validation accuracy the settings are chosen on
    retention: Retention
    facts_lost: dict[str, dict[str, dict[str, int | None]]]  # method -> country -> strength label
    paper_metrics_at_1: dict[str, dict[str, dict[str, float] | None]]  # method or "base" -> country
    steps_to_loss: dict[str, PerCountry]  # threshold label -> method -> country -> steps (None: not reached)
    final_loss: PerCountry
    nnz: PerCountry
    effect: dict[str, dict[str, Effect]]  # method -> country, where measured
    pairs_per_second: PerCountry
    targets: Targets
    seconds: dict[str, float] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)  # the DemoConfig, as JSON
    plots: dict[str, str] = field(default_factory=dict)  # name -> path relative to the report

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "served":
                value = {m: {c: asdict(v) for c, v in per.items()} for m, per in value.items()}
            elif f.name == "effect":
                value = {m: {c: e.to_dict() for c, e in per.items()} for m, per in value.items()}
            elif f.name in ("retention", "targets"):
                value = value.to_dict()
            elif f.name == "plots" and not value:
                continue  # a report without plots has no `plots` key
            out[f.name] = value
        return out

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> DemoReport:
        """A `report.json` read back (`steer demo compare` resumes from the runs it finds)."""
        values = {f.name: raw[f.name] for f in fields(cls) if f.name in raw}
        values["served"] = {
            m: {c: ServedVector(**v) for c, v in per.items()} for m, per in raw["served"].items()
        }
        values["effect"] = {
            m: {c: Effect.from_dict(e) for c, e in per.items()} for m, per in raw["effect"].items()
        }
        values["retention"] = Retention.from_dict(raw["retention"])
        values["targets"] = Targets.from_dict(raw["targets"])
        return cls(**values)
