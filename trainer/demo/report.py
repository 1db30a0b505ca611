"""The demo report: train CAA / SAS / BiPO / YaPO per country on train topics, evaluate on test topics,
write `report.json` + `report.md` + plots (the paper's Table 7, retention, convergence, strength sweep).

YaPO vectors land in `<demo>/vectors/culture/<country>.safetensors` (what the server serves), the
other methods in `<demo>/vectors/baselines/<method>-<country>.safetensors`. Everything is loaded once.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from trainer.config import PREFERENCE_METHODS, TrainConfig
from trainer.data import PreferencePair, load_pairs
from trainer.demo.fanout import balance, run_children
from trainer.demo.summary import DemoReport, PerCountry, Retention, ServedVector, Table, Targets
from trainer.eval.items import NeutralItem, load_mcq, load_neutral
from trainer.eval.results import EvalReport, VectorEval
from trainer.eval.run import EvalConfig, evaluate_vectors
from trainer.plots import plot_loss_curves, plot_strength_panels
from trainer.resources import Resources, load_resources
from trainer.retention import retention_pairs
from trainer.train import TrainResult, steps_to_loss, train_vector
from vectors.device import cpu_name
from vectors.io import write_atomic

METHODS = ("caa", "sas", "bipo", "yapo")
CONVERGENCE_THRESHOLDS = (0.1, 0.3, 0.5)
LABELS = {"base": "Unsteered", "caa": "CAA", "sas": "SAS", "bipo": "BiPO", "yapo": "YaPO"}


@dataclass
class DemoConfig:
    """What the demo report trains and how; defaults fit the ≤ 15 min demo budget on 2 cores."""

    root: str = "var/demo"
    out: str | None = None  # where vectors, logs and the report go (default: root)
    countries: list[str] | None = None  # default: morocco, egypt + the next two of the world
    n_countries: int = 4
    methods: tuple[str, ...] = METHODS
    # yapo / bipo: batch 64 averages over many topics (batch 8 let topic-specific answer tokens dominate) and
    # β 1 stops the vector growing once pairs are ranked (β 0.1 chased a margin that broke the neutral facts);
    # see docs/culture-results.md
    # 450: on validation topics 300 / 450 / 600 steps gave YaPO 26.7 / 33.3 / 34.2 % at its defaults; 600 does not
    # fit the 15-minute build with BiPO trained as long (docs/culture-results.md)
    steps: int = 450
    batch_size: int = 64
    lr: float = 1e-2
    # BiPO's dense vector lives in the residual stream (|h| ≈ 85 at layer 2), YaPO's in SAE code space: one shared
    # lr left BiPO barely moving (norm 10 after 300 steps). Each method gets the best of a small sweep
    # (docs/culture-results.md: YaPO 1e-2 / 3e-2 / 0.1, BiPO 1e-2 / 0.1 / 0.3).
    bipo_lr: float = 0.1
    # proximal L1 on the YaPO vector (exact zeros; `steer train --l1`): fewer features that also fire on neutral
    # text, so a stronger default strength; 0.2 over 0.1 on validation topics, 3 seeds (docs/culture-results.md)
    yapo_l1: float = 0.2
    beta: float = 1.0
    warmup_steps: int = 20
    seed: int = 11
    sas_tau: float = 0.0
    # yapo / bipo: retention penalty on half of the neutral facts (`trainer.retention`); the other half is
    # held out and is the only half retention is measured on. 0 trains without it (the paper's objective).
    retain_weight: float = 1.0
    retain_batch_size: int = 16
    retain_margin: float | None = 3.0
    retain_strengths: tuple[
        float, ...
    ] = ()  # the penalty also at these strengths (`TrainConfig.retain_strengths`)
    # a 0.25 grid up to 1.5: the default strength is one of these, chosen on validation topics
    strengths: list[float] = field(default_factory=lambda: [-1.0, 0.0, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 2.0])
    # val: where default strengths are chosen; test: where they are scored
    eval_splits: list[str] = field(default_factory=lambda: ["val", "test"])
    progress: bool = True
    # torch threads while the report runs (restored afterwards), as `WorldConfig.threads`: tiny models gain
    # little from more, and beside other torch jobs oversubscribed threads slow down many-fold
    threads: int = 1
    # processes that train and evaluate side by side (each with `threads` threads); every run is seeded on its
    # own, so the files do not depend on it. 1: in this process (with `resources`, if given)
    workers: int = 1

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> DemoConfig:
        """The config of `asdict` (JSON turns its tuples into lists)."""
        cfg = cls(**raw)
        cfg.methods = tuple(cfg.methods)
        cfg.retain_strengths = tuple(cfg.retain_strengths)
        return cfg


def split_neutral(items: Sequence[NeutralItem]) -> tuple[list[dict[str, Any]], list[NeutralItem]]:
    """Even-numbered neutral facts train the retention penalty (as rows); odd-numbered ones are held out."""
    train = [
        {"prompt": it.prompt, "options": list(it.options), "answer": it.options[it.answer]}
        for it in items[0::2]
    ]
    return train, list(items[1::2])


def vector_name(method: str, country: str) -> str:
    return f"culture/{country}" if method == "yapo" else f"baselines/{method}-{country}"


def pick_countries(root: Path, cfg: DemoConfig) -> list[str]:
    if cfg.countries:
        return list(cfg.countries)
    world = json.loads((root / "world.json").read_text()) if (root / "world.json").is_file() else {}
    known = [c if isinstance(c, str) else c.get("key") for c in world.get("countries", [])]
    if not known:
        known = sorted(p.stem for p in (root / "data" / "pairs").glob("*.jsonl"))
    ordered = [c for c in ("morocco", "egypt") if c in known] + [
        c for c in known if c not in ("morocco", "egypt")
    ]
    return ordered[: cfg.n_countries]


def build_report(cfg: DemoConfig, *, resources: Resources | None = None) -> DemoReport:
    """Train every (method, country) vector, evaluate them, write report.{json,md} and plots under out."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(max(1, cfg.threads))
    try:
        return _build_report(cfg, resources)
    finally:
        torch.set_num_threads(threads)


def _build_report(cfg: DemoConfig, resources: Resources | None) -> DemoReport:
    t0 = time.perf_counter()
    root = Path(cfg.root)
    countries = pick_countries(root, cfg)
    out = Path(cfg.out or cfg.root)
    res = resources if cfg.workers <= 1 else None
    if cfg.workers <= 1 and res is None:
        res = load_resources(str(root / "model"), str(root / "sae"))
    jobs = [(m, c) for c in countries for m in cfg.methods]
    if res is not None:
        trained = train_jobs(cfg, jobs, res)
    else:  # each job in one of `workers` processes: the same files, sooner
        groups = balance([JOB_COST[m] for m, _ in jobs], cfg.workers)
        parts = _in_children(cfg, [{"stage": "train", "jobs": [jobs[i] for i in g]} for g in groups])
        by_job = {
            jobs[i]: r for g, part in zip(groups, parts, strict=True) for i, r in zip(g, part, strict=True)
        }
        trained = [TrainResult.from_dict(by_job[j]) for j in jobs]
    runs: dict[str, dict[str, TrainResult]] = {m: {} for m in cfg.methods}
    for (method, country), result in zip(jobs, trained, strict=True):
        runs[method][country] = result
    train_seconds = time.perf_counter() - t0

    if res is not None:
        ev = evaluate_countries(cfg, countries, res)
    else:
        groups = balance([1.0] * len(countries), cfg.workers)
        parts = _in_children(cfg, [{"stage": "eval", "countries": [countries[i] for i in g]} for g in groups])
        merged = EvalReport.from_dict(parts[0]).merged(*(EvalReport.from_dict(p) for p in parts[1:]))
        names = [vector_name(m, c) for m in cfg.methods for c in countries]
        ev = replace(  # the order one process would have written
            merged,
            unsteered={c: merged.unsteered[c] for c in countries},
            vectors={n: merged.vectors[n] for n in names},
        )
    ev.write(out / "eval.json")
    eval_seconds = time.perf_counter() - t0 - train_seconds

    report = summarise(ev, runs, countries, cfg)
    report.seconds = {"train": round(train_seconds, 1), "eval": round(eval_seconds, 1)}
    report.config = asdict(cfg)
    _plots(out, report, runs, ev)
    report.seconds["total"] = round(time.perf_counter() - t0, 1)
    write_atomic(out / "report.json", json.dumps(report.to_dict(), indent=1).encode())
    write_atomic(out / "report.md", render_markdown(report).encode())
    return report


# Relative run times: YaPO trains at ~510 pairs/s on the demo world, BiPO at ~890 (its steer is one add); CAA / SAS
# make one pass over the pairs (a few percent of that). So each process gets a mix, not one method.
JOB_COST = {"yapo": 1.75, "bipo": 1.0, "caa": 0.05, "sas": 0.05}


def _in_children(cfg: DemoConfig, stages: Sequence[dict[str, Any]]) -> list[Any]:
    config = asdict(cfg) | {"workers": 1, "progress": False}
    logs = Path(cfg.out or cfg.root) / "train-logs"
    print(f"demo report: {stages[0]['stage']} in {len(stages)} processes (logs in {logs})", file=sys.stderr)
    return run_children("trainer.demo.report_worker", [{"config": config, **st} for st in stages], logs)


def train_jobs(cfg: DemoConfig, jobs: Sequence[tuple[str, str]], res: Resources) -> list[TrainResult]:
    """Train the (method, country) vectors of `jobs` in order, each seeded on its own (`cfg.seed`)."""
    root = Path(cfg.root)
    out = Path(cfg.out or cfg.root)
    retain_facts, _ = split_neutral(load_neutral(root / "data" / "neutral.jsonl"))
    retain = retention_pairs(retain_facts, source="neutral facts (retention half)")
    pairs: dict[str, list[PreferencePair]] = {}
    results = []
    for method, country in jobs:
        if country not in pairs:
            pairs[country] = load_pairs(
                root / "data" / "pairs" / f"{country}.jsonl", where={"split": "train"}
            )
        tc = TrainConfig(
            method=method,
            model=str(root / "model"),
            sae=str(root / "sae"),
            name=vector_name(method, country),
            out=str(out / "vectors"),
            log_dir=str(out / "train-logs"),
            target=country,
            max_steps=cfg.steps,
            batch_size=cfg.batch_size,
            lr=cfg.bipo_lr if method == "bipo" else cfg.lr,
            beta=cfg.beta,
            warmup_steps=cfg.warmup_steps,
            seed=cfg.seed,
            tau=cfg.sas_tau,
            l1=cfg.yapo_l1 if method == "yapo" else 0.0,
            retain_weight=cfg.retain_weight,
            retain_batch_size=cfg.retain_batch_size,
            retain_margin=cfg.retain_margin,
            retain_strengths=tuple(cfg.retain_strengths),
            checkpoint_every=10**9,
            progress=cfg.progress,
        )
        with_retain = method in PREFERENCE_METHODS and cfg.retain_weight > 0
        results.append(
            train_vector(tc, resources=res, pairs=pairs[country], retain=retain if with_retain else None)
        )
    return results


def evaluate_countries(cfg: DemoConfig, countries: Sequence[str], res: Resources) -> EvalReport:
    """Every method's vector for `countries` on the val / test MCQ and the held-out neutral facts (written
    back into each vector's metadata: its default strength and range)."""
    root = Path(cfg.root)
    _, heldout_neutral = split_neutral(load_neutral(root / "data" / "neutral.jsonl"))
    return evaluate_vectors(
        EvalConfig(
            model=str(root / "model"),
            sae=str(root / "sae"),
            catalog=str(Path(cfg.out or cfg.root) / "vectors"),
            vectors=[vector_name(m, c) for m in cfg.methods for c in countries],
            data=str(root / "data" / "mcq.jsonl"),
            strengths=cfg.strengths,
            splits=cfg.eval_splits,
            progress=cfg.progress,
        ),
        resources=res,
        mcq=load_mcq(root / "data" / "mcq.jsonl"),
        neutral=heldout_neutral,
    )


# --------------------------------------------------------------------------------------------------------
# numbers

VIEWS = ("default", "strength_1", "best_0.5_to_2")


def _strength_of(view: str, entry: VectorEval, sweep: Sequence[float]) -> float:
    """The strength a table view reads a vector at: its own default (what the server serves), 1, or the best
    of [0.5, 2] by non-localized accuracy on the *validation* topics (never the test topics)."""
    if view == "default":
        return entry.default_strength
    if view == "strength_1":
        return 1.0
    chooser = entry.record.selected_on
    return max(sweep, key=lambda s: (entry.by_strength[s].acc(chooser, "nonlocalized"), -abs(s - 1)))


def summarise(
    ev: EvalReport,
    runs: Mapping[str, Mapping[str, TrainResult]],
    countries: Sequence[str],
    cfg: DemoConfig,
) -> DemoReport:
    """Table-7-like numbers at each vector's default strength, at strength 1 and at the best strength in
    [0.5, 2] (chosen on validation topics), retention with facts lost, RCA/PNLG, convergence and the targets."""
    kinds: tuple[str, ...] = ("localized", "nonlocalized", "both")
    sweep = [s for s in ev.strengths if 0.5 <= s <= 2.0]
    first = ev.vectors[vector_name(next(iter(runs)), countries[0])].record
    split = first.data_split
    if "nonlocalized_own" in ev.unsteered[countries[0]].accuracy.get(split, {}):
        kinds += ("nonlocalized_own",)  # close cultures share some answers: the items where they differ
    base = {c: ev.unsteered[c] for c in countries}
    tables: dict[str, Table] = {}
    strengths: dict[str, PerCountry] = {v: {} for v in VIEWS}
    retention: dict[str, dict[str, dict[str, float | None]]] = {}
    lost: dict[str, dict[str, dict[str, int | None]]] = {}
    paper: dict[str, dict[str, dict[str, float] | None]] = {}
    for view in VIEWS:
        rows: dict[str, dict[str, dict[str, float]]] = {
            "base": {c: {k: base[c].acc(split, k) for k in kinds} for c in countries}
        }
        for m in runs:
            rows[m] = {}
            strengths[view][m] = {}
            for c in countries:
                entry = ev.vectors[vector_name(m, c)]
                s = _strength_of(view, entry, sweep)
                strengths[view][m][c] = s
                at = entry.by_strength[s]
                rows[m][c] = {k: at.acc(split, k) for k in kinds} | {
                    "retention": at.retention if at.retention is not None else float("nan"),
                    "lost": float(at.lost or 0),
                }
        tables[view] = {
            m: {
                **rows[m],
                "mean": {k: _mean(rows[m][c][k] for c in countries) for k in rows[m][countries[0]]},
            }
            for m in rows
        }
    for m in runs:
        retention[m], lost[m], paper[m] = {}, {}, {}
        for c in countries:
            entry = ev.vectors[vector_name(m, c)]
            retention[m][c] = {f"{s:g}": entry.by_strength[s].retention for s in ev.strengths}
            lost[m][c] = {f"{s:g}": entry.by_strength[s].lost for s in ev.strengths}
            paper[m][c] = entry.by_strength[1.0].paper.get(split) if 1.0 in entry.by_strength else None
    paper["base"] = {c: ev.unsteered[c].paper.get(split) for c in countries}
    served = {m: {c: _served(ev.vectors[vector_name(m, c)]) for c in countries} for m in runs}
    chooser = first.selected_on
    selection = {  # what settings are chosen on: non-localized accuracy on validation topics at the default
        "base": {c: base[c].acc(chooser, "nonlocalized") for c in countries},
        **{
            m: {
                c: ev.vectors[vector_name(m, c)]
                .by_strength[ev.vectors[vector_name(m, c)].default_strength]
                .acc(chooser, "nonlocalized")
                for c in countries
            }
            for m in runs
        },
    }
    by_threshold = {
        f"{t:g}": {
            m: {c: steps_to_loss(runs[m][c].losses, t) for c in countries}
            for m in ("yapo", "bipo")
            if m in runs
        }
        for t in CONVERGENCE_THRESHOLDS
    }
    return DemoReport(
        cpu=cpu_name(),
        countries=list(countries),
        split=split,
        selected_on=first.selected_on,
        strengths=list(ev.strengths),
        table7=tables,
        table_strengths=strengths,
        served=served,
        selection_nonlocalized_at_default=selection,
        retention=Retention(ev.unsteered_retention, ev.retention_facts, retention),
        facts_lost=lost,
        paper_metrics_at_1=paper,
        steps_to_loss=by_threshold,
        final_loss={m: {c: runs[m][c].final_loss for c in countries} for m in ("yapo", "bipo") if m in runs},
        nnz={m: {c: runs[m][c].vector.nnz for c in countries} for m in runs},
        effect={m: {c: e for c in countries if (e := runs[m][c].effect) is not None} for m in runs},
        pairs_per_second={m: {c: runs[m][c].pairs_per_second for c in countries} for m in runs},
        targets=_targets(tables, by_threshold["0.1"], countries, ev),
    )


def _served(entry: VectorEval) -> ServedVector:
    """A vector as the server serves it: default strength, range, and retention there with its 95 % interval."""
    s = entry.default_strength
    facts = entry.record.retention_facts
    return ServedVector(
        default_strength=s,
        strength_range=list(entry.strength_range),
        retention=entry.by_strength[s].retention,
        retention_ci95=list(facts.ci95[s]) if facts else None,
        facts_lost=entry.by_strength[s].lost,
    )


def _mean(values: Any) -> float:
    vals = list(values)
    return sum(vals) / len(vals) if vals else float("nan")


def _targets(
    tables: Mapping[str, Table], convergence: Mapping[str, Any], countries: Sequence[str], ev: EvalReport
) -> Targets:
    """The trainer issues' targets, read at each YaPO vector's own default strength (what the server serves)."""
    served = tables["default"]
    non = {m: served[m]["mean"]["nonlocalized"] for m in served}
    targets = Targets(nonlocalized_at_default_mean={m: round(v, 4) for m, v in non.items()})
    if "yapo" in non:
        gain = 100 * (non["yapo"] - non["base"])
        base_ret = ev.unsteered_retention
        drops = [
            100 * (base_ret - served["yapo"][c]["retention"]) if base_ret is not None else 0.0
            for c in countries
        ]
        targets = replace(
            targets,
            yapo_default_strengths={
                c: ev.vectors[vector_name("yapo", c)].default_strength for c in countries
            },
            yapo_gain_points_at_default=round(gain, 1),
            yapo_gain_ge_30=gain >= 30,
            yapo_retention_drop_points_at_default=round(max(drops), 2),
            yapo_retention_mean_drop_points_at_default=round(_mean(drops), 2),
            yapo_retention_ok=max(drops) <= 1.0 + 1e-9,
            yapo_ge_bipo_at_default=non["yapo"] >= non.get("bipo", -1),
            yapo_ge_caa_at_default=non["yapo"] >= non.get("caa", -1),
            yapo_gain_points_best_05_to_2=round(
                100 * (tables["best_0.5_to_2"]["yapo"]["mean"]["nonlocalized"] - non["base"]), 1
            ),
        )
    if "yapo" in convergence and "bipo" in convergence:
        y, b = convergence["yapo"], convergence["bipo"]
        faster = all(y[c] is not None and (b[c] is None or y[c] < b[c]) for c in countries)
        targets = replace(targets, yapo_faster_than_bipo=faster)
    return targets


# --------------------------------------------------------------------------------------------------------
# rendering


def _plots(
    root: Path, report: DemoReport, runs: Mapping[str, Mapping[str, TrainResult]], ev: EvalReport
) -> None:
    plots = root / "plots"
    paths = {}
    curves = {
        f"{LABELS[m]} {c}": runs[m][c].losses for m in ("yapo", "bipo") if m in runs for c in report.countries
    }
    if curves:
        paths["loss_curves"] = plot_loss_curves(
            curves, plots / "loss-yapo-vs-bipo.png", title="YaPO vs BiPO loss"
        )
    split = report.split
    panels: dict[str, dict[str, dict[float, float]]] = {
        "non-localized test accuracy (mean)": {},
        "retention (mean)": {},
    }
    for m in runs:
        entries = [ev.vectors[vector_name(m, c)] for c in report.countries]
        panels["non-localized test accuracy (mean)"][LABELS[m]] = {
            s: _mean(e.by_strength[s].acc(split, "nonlocalized") for e in entries) for s in ev.strengths
        }
        if ev.retention_facts:
            panels["retention (mean)"][LABELS[m]] = {
                s: _mean(e.by_strength[s].retention for e in entries) for s in ev.strengths
            }
    if not panels["retention (mean)"]:
        del panels["retention (mean)"]
    paths["strength_sweep"] = plot_strength_panels(panels, plots / "strength-sweep.png")
    report.plots = {k: str(p.relative_to(root)) for k, p in paths.items()}


def _pct(x: float | None) -> str:
    return "—" if x is None else f"{100 * x:.1f}"


def _served_cells(v: ServedVector) -> str:
    lo, hi = v.retention_ci95 or (None, None)
    return f"{_pct(v.retention)} ({_pct(lo)}–{_pct(hi)}, {v.facts_lost})"


def _convergence_lines(report: DemoReport, countries: Sequence[str]) -> list[str]:
    """Steps to each loss threshold (trailing mean over 10 steps) and the final loss, YaPO vs BiPO."""
    by_t = report.steps_to_loss
    final = report.final_loss
    head = [f"{m} ≤ {t}" for t in by_t for m in ("YaPO", "BiPO")] + ["final YaPO", "final BiPO"]
    lines = [
        "## Convergence: steps until the trailing mean loss (10 steps) is below each threshold",
        "",
        "| country | " + " | ".join(head) + " |",
        "|" + "---|" * (1 + len(head)),
    ]
    for c in countries:
        cells = []
        for per_method in by_t.values():
            for m in ("yapo", "bipo"):
                step = per_method.get(m, {}).get(c)
                cells.append("not reached" if step is None else str(step))
        for m in ("yapo", "bipo"):
            loss = final.get(m, {}).get(c)
            cells.append("—" if loss is None else f"{loss:.3f}")
        lines.append(f"| {c} | " + " | ".join(cells) + " |")
    return lines


def render_markdown(report: DemoReport) -> str:
    countries = report.countries
    kinds = (("localized", "Loc"), ("nonlocalized", "Non-loc"), ("both", "Both"))
    lines = ["# Culture-world steering report", ""]
    lines += [
        f"Countries: {', '.join(countries)}. Vectors trained on train topics, scored on **{report.split}** "
        f"topics by option log-likelihood (the paper's MCQ analog); strengths chosen on **{report.selected_on}** "
        "topics. Accuracy in %.",
        "",
    ]
    if report.cpu:
        lines += [
            f"Made on {report.cpu}: floating point differs between CPU kinds, so the same command on another "
            "CPU trains slightly different vectors and gives somewhat different figures.",
            "",
        ]
    for view, title in (
        ("default", "each vector at its own default_strength (what the server serves)"),
        ("strength_1", "strength 1 for every method"),
        ("best_0.5_to_2", "best strength in [0.5, 2] per vector (by validation non-localized accuracy)"),
    ):
        table = report.table7[view]
        methods = list(table)
        lines += [f"## Table 7 analog — {title}", ""]
        head = "| country | " + " | ".join(f"{k} {LABELS[m]}" for _, k in kinds for m in methods) + " |"
        lines += [head, "|" + "---|" * (1 + len(kinds) * len(methods))]
        for c in [*countries, "mean"]:
            cells = [_pct(table[m][c][k]) for k, _ in kinds for m in methods]
            lines.append(f"| {c} | " + " | ".join(cells) + " |")
        if view != "strength_1":
            used = report.table_strengths[view]
            lines += [
                "",
                "Strengths: "
                + "; ".join(f"{LABELS[m]} " + ", ".join(f"{used[m][c]:g}" for c in countries) for m in used),
            ]
        if view == "default" and report.retention.facts:
            lines += ["", "Retention there (%, 95 % Wilson interval, facts lost):", ""]
            for m, per_country in report.served.items():
                cells = [f"{c} {_served_cells(v)}" for c, v in per_country.items()]
                lines.append(f"- {LABELS[m]}: " + "; ".join(cells))
        lines.append("")
    cfg = report.config
    n_facts = report.retention.facts
    if cfg.get("retain_weight"):
        margin = cfg.get("retain_margin")
        keep = "the whole unsteered lead" if margin is None else f"a lead of {margin:g} nats"
        held_out = (
            f"Measured on the held-out (odd-numbered) half of the neutral facts ({n_facts} facts); YaPO and BiPO "
            f"were trained with the retention penalty (weight {cfg['retain_weight']:g}, keeping {keep}) on the "
            "other half. Cells: mean retention, then the facts lost (right unsteered, wrong steered) summed over "
            "the countries."
        )
    else:
        held_out = (
            f"Measured on the odd-numbered half of the neutral facts ({n_facts}); no retention penalty."
        )
    lines += [
        "## Retention (neutral facts, %)",
        "",
        held_out,
        "",
        f"Unsteered: {_pct(report.retention.unsteered)}",
        "",
        "| method | " + " | ".join(f"s={s:g}" for s in report.strengths) + " |",
        "|" + "---|" * (1 + len(report.strengths)),
    ]
    for m, kept in report.retention.by_method.items():
        lost = report.facts_lost[m]
        cells = [
            f"{_pct(_mean(kept[c][f'{s:g}'] for c in countries))} "
            f"({sum(lost[c][f'{s:g}'] or 0 for c in countries)})"
            for s in report.strengths
        ]
        lines.append(f"| {LABELS[m]} | " + " | ".join(cells) + " |")
    lines += ["", *_convergence_lines(report, countries)]
    lines += ["", "## Targets", "", "```json", json.dumps(report.targets.to_dict(), indent=1), "```", ""]
    if report.plots:
        lines += ["## Plots", ""] + [f"![{k}]({p})" for k, p in report.plots.items()] + [""]
    lines += [f"Time: {json.dumps(report.seconds)} seconds.", ""]
    return "\n".join(lines)


__all__ = [
    "METHODS",
    "DemoConfig",
    "build_report",
    "pick_countries",
    "render_markdown",
    "summarise",
    "vector_name",
]
