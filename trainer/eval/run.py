"""steer eval`: option log-likelihood accuracy of steered models, retention, RCA / PNLG, strength choice.

For every vector and strength, the model is steered with the `vectors` steering math (the same
functions the server's tables use) at the vector's layer, on every position, and each MCQ item of
the vector's target country is answered by the option with the highest summed log-probability
(`vectors.scoring`; rows marked `calibrate` relative to their topic's localized prompts, see
`trainer.eval.items.load_mcq`). Accuracy is split by localized / non-localized prompt and train / test topic;
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

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from trainer.data import DataError
from trainer.eval.items import DEFAULT_STRENGTHS, McqItem, NeutralItem, load_mcq, load_neutral
from trainer.eval.metrics import (
    Priors,
    group_accuracy,
    mcq_hits,
    mcq_priors,
    neutral_hits,
    paper_metrics,
    shares_answer,
    steered,
)
from trainer.eval.results import EvalReport, StrengthEval, VectorEval
from trainer.eval.strength import RETENTION_BOUND, TRAINED_STRENGTH, default_strength, strength_range
from trainer.resources import Resources, load_resources
from trainer.stats import wilson
from vectors.eval_record import EvalRecord, RetentionFacts
from vectors.io import load_vector, update_metadata
from vectors.metadata import utc_now
from vectors.names import vector_path
from vectors.vector import SteeringVector


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


def target_of(vector: SteeringVector, override: Mapping[str, str]) -> str:
    """The country a vector steers toward: explicit mapping, else training.target, else the name's leaf."""
    if vector.name in override:
        return override[vector.name]
    return vector.meta.training.target or vector.name.rsplit("/", 1)[-1]


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
    priors = mcq_priors(res, mcq)  # calibrated items' priors, from the unsteered model
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
            unsteered[country] = _score(res, items, priors, neutral, base_hits, base_hits, cfg.alpha, close)
        sweep: dict[float, StrengthEval] = {}
        for s in strengths:
            if s == 0:
                sweep[s] = unsteered[country]
            else:
                with steered(res, vector, s):
                    hits = neutral_hits(res, neutral) if neutral else None
                    sweep[s] = _score(res, items, priors, neutral, hits, base_hits, cfg.alpha, close)
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
    priors: Priors,
    neutral: Sequence[NeutralItem],
    hits: Sequence[bool] | None,
    base_hits: Sequence[bool] | None,
    alpha: float,
    close: bool = False,
) -> StrengthEval:
    """MCQ accuracy under the current steering, with retention from `hits` (neutral facts answered right)."""
    acc = group_accuracy(items, mcq_hits(res, items, priors), close)
    if hits is None or base_hits is None:
        return StrengthEval(acc, paper_metrics(acc, alpha))
    lost = sum(b and not h for h, b in zip(hits, base_hits, strict=True))
    return StrengthEval(acc, paper_metrics(acc, alpha), sum(hits) / len(hits), lost)


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
