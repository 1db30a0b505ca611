"""`steer eval`: option log-likelihood accuracy of steered models, retention, RCA / PNLG, strength choice.

For every vector and strength, the model is steered with the `vectors` steering math (the same
functions the server's tables use) at the vector's layer, on every position, and each MCQ item of
the vector's target country is answered by the option with the highest summed log-probability
(`vectors.scoring`). Accuracy is split by localized / non-localized prompt and train / test topic;
retention is the accuracy on neutral facts (the paper's MMLU check).

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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from trainer.data import DataError, read_rows
from trainer.plots import plot_strength_panels
from trainer.resources import Resources, load_resources
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
    picks = pick_options(res, [(it.prompt, [a for _, a in it.options]) for it in items])
    return [it.options[p][0] == it.country for it, p in zip(items, picks, strict=True)]


def neutral_accuracy(res: Resources, items: Sequence[NeutralItem]) -> float:
    picks = pick_options(res, [(it.prompt, it.options) for it in items])
    return sum(p == it.answer for p, it in zip(picks, items, strict=True)) / len(items)


def group_accuracy(items: Sequence[McqItem], hits: Sequence[bool]) -> dict[str, dict[str, float]]:
    """{split: {"localized", "nonlocalized", "both"}} plus split "all"; absent groups are left out."""
    acc: dict[str, dict[str, list[bool]]] = defaultdict(lambda: defaultdict(list))
    for it, hit in zip(items, hits, strict=True):
        kind = "localized" if it.localized else "nonlocalized"
        for split in (it.split, "all"):
            acc[split][kind].append(hit)
            acc[split]["both"].append(hit)
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


def strength_range(
    retention: Mapping[float, float], base: float, tolerance: float = 0.02
) -> tuple[float, float]:
    """The contiguous range of swept strengths around 0 whose retention stays within `tolerance` of `base`."""
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
    return lo, hi


def default_strength(
    accuracy: Mapping[float, float],
    retention: Mapping[float, float],
    base: float,
    tolerance: float = 0.01,
    within: tuple[float, float] | None = None,
) -> float:
    """The strength with the best held-out accuracy whose retention is within `tolerance` of `base`,
    inside `within` (the strength range) when given; ties go to the gentler strength, 0 when none qualifies."""
    lo, hi = within if within is not None else (-math.inf, math.inf)
    ok = [s for s in accuracy if lo <= s <= hi and retention.get(s, base) >= base - tolerance - 1e-12]
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
    write_back: bool = True
    device: str = "cpu"
    dtype: str = "float32"
    progress: bool = True


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
) -> dict[str, Any]:
    """Evaluate every vector of `cfg.vectors` at every strength; returns (and writes) the report."""
    res = resources or load_resources(cfg.model, cfg.sae, device=cfg.device, dtype=cfg.dtype)
    mcq = list(mcq if mcq is not None else load_mcq(cfg.data))
    if cfg.splits:
        mcq = [it for it in mcq if it.split in cfg.splits]
    neutral = list(neutral) if neutral is not None else (load_neutral(cfg.neutral) if cfg.neutral else [])
    strengths = sorted({float(s) for s in cfg.strengths})
    paths = {name: vector_path(cfg.catalog, name) for name in cfg.vectors}
    vectors = {name: load_vector(p) for name, p in paths.items()}

    base_retention = neutral_accuracy(res, neutral) if neutral else None
    unsteered: dict[str, Any] = {"retention": base_retention, "countries": {}}
    report: dict[str, Any] = {
        "strengths": strengths,
        "alpha": cfg.alpha,
        "unsteered": unsteered,
        "vectors": {},
    }
    total = len(vectors) * len(strengths)
    bar = tqdm(total=total, desc="eval", disable=not cfg.progress, leave=False)
    for name, vector in vectors.items():
        country = target_of(vector, cfg.targets)
        items = [it for it in mcq if it.country == country]
        if not items:
            raise DataError(f"{cfg.data}: no MCQ items for {country!r} (target of {name})")
        if country not in unsteered["countries"]:
            acc0 = group_accuracy(items, mcq_hits(res, items))
            unsteered["countries"][country] = {"accuracy": acc0, "paper": paper_metrics(acc0, cfg.alpha)}
        sweep: dict[str, Any] = {}
        for s in strengths:
            if s == 0:
                acc = unsteered["countries"][country]["accuracy"]
                ret = base_retention
            else:
                with steered(res, vector, s):
                    acc = group_accuracy(items, mcq_hits(res, items))
                    ret = neutral_accuracy(res, neutral) if neutral else None
            sweep[_key(s)] = {"accuracy": acc, "retention": ret, "paper": paper_metrics(acc, cfg.alpha)}
            bar.update(1)
        entry = _summarise(name, vector, country, strengths, sweep, base_retention)
        report["vectors"][name] = entry
        if cfg.write_back:
            update_metadata(
                paths[name],
                eval=entry["headline"],
                strength_range=entry["strength_range"],
                default_strength=entry["default_strength"],
            )
    bar.close()
    if cfg.out:
        out = Path(cfg.out)
        write_atomic(out, json.dumps(report, indent=1).encode())
        sweep_plot(report, out.with_suffix(".png"))
    return report


def _key(s: float) -> str:
    return f"{s:g}"


def heldout_split(sweep: Mapping[str, Any]) -> str:
    """The split that measures generalisation: "test" when the data has one, else "all"."""
    first = next(iter(sweep.values()))["accuracy"]
    return "test" if "test" in first else "all"


def _summarise(
    name: str,
    vector: SteeringVector,
    country: str,
    strengths: Sequence[float],
    sweep: Mapping[str, Any],
    base_retention: float | None,
) -> dict[str, Any]:
    split = heldout_split(sweep)
    acc_both = {s: sweep[_key(s)]["accuracy"][split]["both"] for s in strengths}
    acc_non = {s: sweep[_key(s)]["accuracy"][split].get("nonlocalized", float("nan")) for s in strengths}
    if base_retention is None:
        retention = {s: 1.0 for s in strengths}
        base = 1.0
    else:
        retention = {s: sweep[_key(s)]["retention"] for s in strengths}
        base = base_retention
    lo, hi = strength_range(retention, base, 0.02)
    best = default_strength(acc_both, retention, base, 0.01, within=(lo, hi))
    zero = sweep.get(_key(0.0))
    best_non = max((s for s in strengths if 0.5 <= s <= 2.0), key=lambda s: acc_non[s], default=None)
    headline = {
        "data_split": split,
        "target": country,
        "strengths": list(strengths),
        "heldout_accuracy": {_key(s): round(acc_both[s], 4) for s in strengths},
        "heldout_nonlocalized_accuracy": {_key(s): round(acc_non[s], 4) for s in strengths},
        "retention": {_key(s): round(retention[s], 4) for s in strengths}
        if base_retention is not None
        else None,
        "unsteered": {
            "heldout_accuracy": zero["accuracy"][split]["both"] if zero else None,
            "retention": base_retention,
        },
        "best_nonlocalized_0.5_to_2": {"strength": best_non, "accuracy": acc_non[best_non]}
        if best_non
        else None,
        "evaluated": utc_now(),
    }
    return {
        "method": vector.meta.method,
        "target": country,
        "by_strength": dict(sweep),
        "strength_range": [lo, hi],
        "default_strength": best,
        "headline": headline,
    }


def sweep_plot(report: Mapping[str, Any], path: Path) -> Path:
    panels: dict[str, dict[str, dict[float, float]]] = {
        "held-out non-localized accuracy": {},
        "retention": {},
    }
    for name, entry in report["vectors"].items():
        split = heldout_split(entry["by_strength"])
        panels["held-out non-localized accuracy"][name] = {
            float(k): v["accuracy"][split].get("nonlocalized", float("nan"))
            for k, v in entry["by_strength"].items()
        }
        if report["unsteered"]["retention"] is not None:
            panels["retention"][name] = {float(k): v["retention"] for k, v in entry["by_strength"].items()}
    if not panels["retention"]:
        del panels["retention"]
    return plot_strength_panels(panels, path)


__all__ = [
    "DEFAULT_STRENGTHS",
    "EvalConfig",
    "McqItem",
    "NeutralItem",
    "default_strength",
    "evaluate_vectors",
    "group_accuracy",
    "load_mcq",
    "load_neutral",
    "mcq_hits",
    "neutral_accuracy",
    "pnlg",
    "rca",
    "steered",
    "strength_range",
    "target_of",
]
