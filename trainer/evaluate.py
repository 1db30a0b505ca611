"""`steer eval`: option log-likelihood accuracy of steered models, retention, RCA / PNLG, strength choice.

For every vector and strength, the model is steered with the `vectors` steering math (the same
functions the server's tables use) at the vector's layer, on every position, and each MCQ item of
the vector's target country is answered by the option with the highest summed log-probability
(`vectors.scoring`). Accuracy is split by localized / non-localized prompt and train / test topic;
retention is the accuracy on neutral facts (the paper's MMLU check), with its 95 % Wilson interval and the
number of facts each strength loses (answered right unsteered, wrong steered).

Strength choice: `strength_range` is where retention stays within 2 points of unsteered, always widened to
include the strength the vector was trained at (1); `default_strength` is the strength with the best accuracy
on the *validation* topics ("val" split; the held-out split when the data has none) among those for which we
are 95 % sure that fewer than 3 % of the facts are lost (Wilson upper bound; with 320 facts: at most 3 lost).

The paper's metrics, per vector and topic split, from p_loc / p_non (localized / non-localized
accuracy): RCA = 2·p_loc·p_non / (p_loc + p_non + ε) (higher is better) and
PNLG_α = (p_loc − p_non) / (p̄^α + ε) with p̄ = (p_loc + p_non)/2 (lower is better; α = 0.5 by default,
the paper does not state its α).
"""

from __future__ import annotations

import contextlib
import json
import math
from collections import defaultdict
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from trainer.data import DataError, read_rows
from trainer.plots import plot_strength_panels
from trainer.resources import Resources, load_resources
from trainer.stats import wilson
from vectors.eval_record import EvalRecord, RetentionFacts
from vectors.io import load_vector, update_metadata, write_atomic
from vectors.metadata import utc_now
from vectors.names import vector_path
from vectors.scoring import option_logprobs_many
from vectors.slots import apply_config
from vectors.vector import SteeringVector

EPS = 1e-8
DEFAULT_STRENGTHS = (-2.0, -1.0, 0.0, 0.5, 1.0, 1.5, 2.0)


@dataclass(frozen=True)
class McqItem:
    """A culture MCQ: `options` maps each country to its answer; the gold option is `country`'s."""

    prompt: str
    options: tuple[tuple[str, str], ...]
    country: str
    topic: str
    localized: bool
    split: str


@dataclass(frozen=True)
class NeutralItem:
    prompt: str
    options: tuple[str, ...]
    answer: int


def load_mcq(path: str | Path) -> list[McqItem]:
    rows = read_rows(path)
    need = {"prompt", "options", "country", "localized"}
    items = []
    for i, r in enumerate(rows):
        missing = need - set(r)
        if missing or not isinstance(r["options"], dict):
            raise DataError(
                f"{path}: row {i}: MCQ rows need {sorted(need)} with options as {{country: answer}}"
            )
        items.append(
            McqItem(
                r["prompt"],
                tuple(r["options"].items()),
                r["country"],
                str(r.get("topic", "")),
                bool(r["localized"]),
                str(r.get("split", "all")),
            )
        )
    if not items:
        raise DataError(f"{path}: no MCQ items")
    return items


def load_neutral(path: str | Path) -> list[NeutralItem]:
    items = []
    for i, r in enumerate(read_rows(path)):
        try:
            options = tuple(r["options"])
            items.append(NeutralItem(r["prompt"], options, options.index(r["answer"])))
        except (KeyError, ValueError, TypeError):
            raise DataError(
                f"{path}: row {i}: neutral rows need prompt, options [..] and answer among them"
            ) from None
    if not items:
        raise DataError(f"{path}: no neutral items")
    return items


# --------------------------------------------------------------------------------------------------------
# steering and scoring


@contextlib.contextmanager
def steered(res: Resources, vector: SteeringVector | None, strength: float) -> Iterator[None]:
    """Apply `strength · vector` at its layer on every position, through the server's steering code."""
    if vector is None or strength == 0:
        yield
        return
    if vector.space == "sae" and res.coder is None:
        raise ValueError(f"{vector.name} is an SAE-space vector: evaluation needs --sae")
    coders = [res.coder] if res.coder is not None else []
    with apply_config(res.model, {vector: strength}, coders):
        yield


def pick_options(res: Resources, questions: Sequence[tuple[str, Sequence[str]]]) -> list[int]:
    """Index of the highest-log-likelihood option of each (prompt, options); duplicates scored once."""
    index: dict[tuple[str, tuple[str, ...]], int] = {}
    unique: list[tuple[str, list[str]]] = []
    slots = []
    for prompt, options in questions:
        key = (prompt, tuple(options))
        if key not in index:
            index[key] = len(unique)
            unique.append((prompt, list(options)))
        slots.append(index[key])
    scores = option_logprobs_many(res.model, res.tokenizer, unique)
    best = [max(range(len(s)), key=s.__getitem__) for s in scores]
    return [best[k] for k in slots]


def mcq_hits(res: Resources, items: Sequence[McqItem]) -> list[bool]:
    """Whether each item's pick is its country's answer (the text: close cultures may share an answer)."""
    texts = [list(dict.fromkeys(a for _, a in it.options)) for it in items]
    picks = pick_options(res, [(it.prompt, t) for it, t in zip(items, texts, strict=True)])
    return [t[p] == dict(it.options)[it.country] for it, t, p in zip(items, texts, picks, strict=True)]


def neutral_hits(res: Resources, items: Sequence[NeutralItem]) -> list[bool]:
    """Whether each neutral fact is answered right."""
    picks = pick_options(res, [(it.prompt, it.options) for it in items])
    return [p == it.answer for p, it in zip(picks, items, strict=True)]


def neutral_accuracy(res: Resources, items: Sequence[NeutralItem]) -> float:
    return sum(neutral_hits(res, items)) / len(items)


def shares_answer(item: McqItem) -> bool:
    """Whether another country of the item has the same answer (close cultures, `WorldConfig.shared_answers`)."""
    gold = dict(item.options)[item.country]
    return sum(a == gold for _, a in item.options) > 1


def group_accuracy(
    items: Sequence[McqItem], hits: Sequence[bool], close: bool = False
) -> dict[str, dict[str, float]]:
    """{split: {"localized", "nonlocalized", "both"}} plus split "all"; absent groups are left out. With `close`
    (some countries of the data share answers), also "nonlocalized_own": the non-localized items whose answer is
    the country's own, where a vector has to tell close cultures apart."""
    acc: dict[str, dict[str, list[bool]]] = defaultdict(lambda: defaultdict(list))
    for it, hit in zip(items, hits, strict=True):
        kind = "localized" if it.localized else "nonlocalized"
        for split in (it.split, "all"):
            acc[split][kind].append(hit)
            acc[split]["both"].append(hit)
            if close and not it.localized and not shares_answer(it):
                acc[split]["nonlocalized_own"].append(hit)
    return {s: {k: sum(v) / len(v) for k, v in groups.items()} for s, groups in acc.items()}


def rca(p_loc: float, p_non: float) -> float:
    return 2 * p_loc * p_non / (p_loc + p_non + EPS)


def pnlg(p_loc: float, p_non: float, alpha: float = 0.5) -> float:
    mean = (p_loc + p_non) / 2
    return (p_loc - p_non) / (mean**alpha + EPS)


def paper_metrics(acc: Mapping[str, Mapping[str, float]], alpha: float) -> dict[str, dict[str, float]]:
    out = {}
    for split, g in acc.items():
        if "localized" in g and "nonlocalized" in g:
            out[split] = {
                "rca": rca(g["localized"], g["nonlocalized"]),
                "pnlg": pnlg(g["localized"], g["nonlocalized"], alpha),
            }
    return out


# --------------------------------------------------------------------------------------------------------
# strength choice

TRAINED_STRENGTH = (
    1.0  # every trainer method's vector is the shift it was trained (or estimated) to apply at 1
)
RANGE_TOLERANCE = 0.02  # strength_range: retention within 2 points of unsteered
RETENTION_BOUND = 0.03  # default strength: 95 % sure that it loses under 3 % of the neutral facts


def strength_range(
    retention: Mapping[float, float],
    base: float,
    tolerance: float = RANGE_TOLERANCE,
    include: Sequence[float] = (TRAINED_STRENGTH,),
) -> tuple[float, float]:
    """The contiguous range of swept strengths around 0 whose retention stays within `tolerance` of `base`,
    widened to contain every strength of `include` (what the vector was trained at is never refused)."""
    ok = {s: r >= base - tolerance - 1e-12 for s, r in retention.items()}
    ok[0.0] = True
    pos = sorted(s for s in ok if s >= 0)
    neg = sorted((s for s in ok if s <= 0), reverse=True)
    hi = lo = 0.0
    for s in pos:
        if not ok[s]:
            break
        hi = s
    for s in neg:
        if not ok[s]:
            break
        lo = s
    return min([lo, *include]), max([hi, *include])


def default_strength(
    accuracy: Mapping[float, float],
    lost_upper: Mapping[float, float],
    bound: float = RETENTION_BOUND,
    within: tuple[float, float] | None = None,
) -> float:
    """The strength with the best (validation) accuracy among those whose share of neutral facts lost has a 95 %
    upper bound (`lost_upper`, Wilson) of at most `bound`, inside `within` when given; ties go to the gentler
    strength; 0 when none qualifies. Strengths missing from `lost_upper` (no neutral facts) qualify."""
    lo, hi = within if within is not None else (-math.inf, math.inf)
    ok = [s for s in accuracy if lo <= s <= hi and (s == 0 or lost_upper.get(s, 0.0) <= bound + 1e-12)]
    if not ok:
        return 0.0
    return max(ok, key=lambda s: (round(accuracy[s], 9), -abs(s), s))


# --------------------------------------------------------------------------------------------------------
# the evaluation


@dataclass
class EvalConfig:
    model: str
    catalog: str
    vectors: list[str]
    data: str  # mcq.jsonl
    neutral: str | None = None
    sae: str | None = None
    strengths: list[float] = field(default_factory=lambda: list(DEFAULT_STRENGTHS))
    out: str | None = None  # report JSON; the sweep PNG goes next to it
    splits: list[str] | None = None  # MCQ topic splits to score (None: all)
    targets: dict[str, str] = field(default_factory=dict)  # vector name -> country (default: metadata / leaf)
    alpha: float = 0.5
    retention_bound: float = RETENTION_BOUND
    write_back: bool = True
    device: str = "cpu"
    dtype: str = "float32"
    progress: bool = True


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


def target_of(vector: SteeringVector, override: Mapping[str, str]) -> str:
    """The country a vector steers toward: explicit mapping, else training.target, else the name's leaf."""
    if vector.name in override:
        return override[vector.name]
    return str(vector.meta.training.get("target") or vector.name.rsplit("/", 1)[-1])


def evaluate_vectors(
    cfg: EvalConfig,
    *,
    resources: Resources | None = None,
    mcq: Sequence[McqItem] | None = None,
    neutral: Sequence[NeutralItem] | None = None,
) -> EvalReport:
    """Evaluate every vector of `cfg.vectors` at every strength; returns (and writes) the report."""
    res = resources or load_resources(cfg.model, cfg.sae, device=cfg.device, dtype=cfg.dtype)
    mcq = list(mcq if mcq is not None else load_mcq(cfg.data))
    if cfg.splits:
        mcq = [it for it in mcq if it.split in cfg.splits]
    neutral = list(neutral) if neutral is not None else (load_neutral(cfg.neutral) if cfg.neutral else [])
    strengths = sorted({float(s) for s in cfg.strengths} | {0.0})
    paths = {name: vector_path(cfg.catalog, name) for name in cfg.vectors}
    vectors = {name: load_vector(p) for name, p in paths.items()}

    close = any(shares_answer(it) for it in mcq)  # close cultures share answers: score their own ones too
    base_hits = neutral_hits(res, neutral) if neutral else None
    unsteered: dict[str, StrengthEval] = {}
    results: dict[str, VectorEval] = {}
    bar = tqdm(total=len(vectors) * len(strengths), desc="eval", disable=not cfg.progress, leave=False)
    for name, vector in vectors.items():
        country = target_of(vector, cfg.targets)
        items = [it for it in mcq if it.country == country]
        if not items:
            raise DataError(f"{cfg.data}: no MCQ items for {country!r} (target of {name})")
        if country not in unsteered:
            unsteered[country] = _score(res, items, neutral, base_hits, base_hits, cfg.alpha, close)
        sweep: dict[float, StrengthEval] = {}
        for s in strengths:
            if s == 0:
                sweep[s] = unsteered[country]
            else:
                with steered(res, vector, s):
                    hits = neutral_hits(res, neutral) if neutral else None
                    sweep[s] = _score(res, items, neutral, hits, base_hits, cfg.alpha, close)
            bar.update(1)
        result = _summarise(name, vector, country, sweep, len(neutral), cfg.retention_bound)
        # the record as the catalog stores it (4 decimals), so a report read back from JSON equals this one
        result = replace(result, record=EvalRecord.from_dict(result.record.to_dict()))
        results[name] = result
        if cfg.write_back:
            update_metadata(
                paths[name],
                eval=result.record.to_dict(),
                strength_range=result.strength_range,
                default_strength=result.default_strength,
            )
    bar.close()
    base_retention = sum(base_hits) / len(base_hits) if base_hits else None
    report = EvalReport(strengths, cfg.alpha, len(neutral), base_retention, unsteered, results)
    if cfg.out:
        report.write(Path(cfg.out))
    return report


def _score(
    res: Resources,
    items: Sequence[McqItem],
    neutral: Sequence[NeutralItem],
    hits: Sequence[bool] | None,
    base_hits: Sequence[bool] | None,
    alpha: float,
    close: bool = False,
) -> StrengthEval:
    """MCQ accuracy under the current steering, with retention from `hits` (neutral facts answered right)."""
    acc = group_accuracy(items, mcq_hits(res, items), close)
    if hits is None or base_hits is None:
        return StrengthEval(acc, paper_metrics(acc, alpha))
    lost = sum(b and not h for h, b in zip(hits, base_hits, strict=True))
    return StrengthEval(acc, paper_metrics(acc, alpha), sum(hits) / len(hits), lost)


def _key(s: float) -> str:
    return f"{s:g}"


def heldout_split(acc: Mapping[str, Any]) -> str:
    """The split that measures generalisation: "test" when the data has one, else "all"."""
    return "test" if "test" in acc else "all"


def selection_split(acc: Mapping[str, Any]) -> str:
    """The split settings are chosen on: "val" when the data has one, else the held-out split."""
    return "val" if "val" in acc else heldout_split(acc)


def _summarise(
    name: str,
    vector: SteeringVector,
    country: str,
    sweep: Mapping[float, StrengthEval],
    n_facts: int,
    bound: float,
) -> VectorEval:
    strengths = sorted(sweep)
    first = sweep[strengths[0]].accuracy
    split, chooser = heldout_split(first), selection_split(first)
    base = sweep[0.0]
    facts = None
    lost_upper: dict[float, float] = {}
    if n_facts:
        retention = {s: e.retention or 0.0 for s, e in sweep.items()}
        lost = {s: e.lost or 0 for s, e in sweep.items()}
        lost_upper = {s: wilson(k, n_facts)[1] for s, k in lost.items()}
        right = {s: round(retention[s] * n_facts) for s in strengths}
        facts = RetentionFacts(n_facts, lost, {s: wilson(right[s], n_facts) for s in strengths})
        lo, hi = strength_range(retention, base.retention or 0.0)
    else:
        retention = {}
        lo, hi = strength_range({}, 1.0)
    chosen = {s: sweep[s].acc(chooser) for s in strengths}
    best = default_strength(chosen, lost_upper, bound, within=(lo, hi))
    record = EvalRecord(
        target=country,
        data_split=split,
        selected_on=chooser,
        strengths=tuple(strengths),
        heldout_accuracy={s: sweep[s].acc(split) for s in strengths},
        heldout_nonlocalized_accuracy={s: sweep[s].acc(split, "nonlocalized") for s in strengths},
        selection_accuracy=chosen,
        retention=retention,
        retention_facts=facts,
        unsteered_heldout_accuracy=base.acc(split),
        unsteered_retention=base.retention,
        trained_strength=TRAINED_STRENGTH,
        evaluated=utc_now(),
    )
    return VectorEval(name, vector.meta.method, country, dict(sweep), (lo, hi), best, record)


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


__all__ = [
    "DEFAULT_STRENGTHS",
    "TRAINED_STRENGTH",
    "EvalConfig",
    "EvalReport",
    "McqItem",
    "NeutralItem",
    "StrengthEval",
    "VectorEval",
    "default_strength",
    "evaluate_vectors",
    "group_accuracy",
    "load_mcq",
    "load_neutral",
    "mcq_hits",
    "neutral_accuracy",
    "neutral_hits",
    "pnlg",
    "rca",
    "steered",
    "strength_range",
    "target_of",
]
