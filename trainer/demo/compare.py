"""`steer demo compare`: the paper's Table 7 analog on one world, with learning rates chosen on validation
topics, convergence and stability over seeds.

Every number comes from `trainer.demo.report.build_report` runs, one folder each under OUT, so a run is the demo
report's own training and evaluation, and an interrupted comparison resumes from the runs already written:

1. one run per learning-rate candidate (YaPO and BiPO, first seed): each method keeps the candidate with the
   best mean non-localized accuracy on **validation** topics at its default strength (the one it would be
   served at; ties go to the smaller rate);
2. CAA and SAS once (they have no learning rate and do not depend on the seed);
3. YaPO and BiPO at the chosen rates for the remaining seeds.

The table is test-topic accuracy (localized / non-localized / both) per country at strength 1 (what the
vectors were trained at) and at each vector's default strength, mean and spread over seeds; convergence is the
steps to a trailing-mean loss of 0.5 / 0.3 / 0.1; stability is the spread of accuracy and final loss over
seeds and the mean cosine between the seeds' vectors.
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from itertools import combinations
from pathlib import Path
from typing import Any

import torch

from trainer.demo.report import CONVERGENCE_THRESHOLDS, LABELS, DemoConfig, build_report, vector_name
from trainer.demo.summary import DemoReport
from trainer.resources import Resources, load_resources
from vectors.io import load_vector, write_atomic
from vectors.names import vector_path

PREFERENCE = ("yapo", "bipo")
BASELINES = ("caa", "sas")
VIEWS = ("strength_1", "default")
KINDS = ("localized", "nonlocalized", "both")


@dataclass(frozen=True)
class CompareConfig:
    """What to compare on which world; the rest of each run is `DemoConfig`'s defaults."""

    root: str  # a built world (`steer demo build --preset wide --out ROOT`)
    out: str | None = None  # default: ROOT/compare
    seeds: tuple[int, ...] = (11, 12, 13)
    lrs: Mapping[str, tuple[float, ...]] | None = None  # default: YaPO 1e-2, 3e-2; BiPO 0.1, 0.3
    n_countries: int = 4
    steps: int = 300
    threads: int = 2  # torch threads of each run (the wide world's model is 5x the demo's)
    workers: int = 1  # processes per run (`DemoConfig.workers`; each with `threads` threads)
    progress: bool = True

    @property
    def candidates(self) -> dict[str, tuple[float, ...]]:
        return dict(self.lrs or {"yapo": (1e-2, 3e-2), "bipo": (0.1, 0.3)})

    @property
    def folder(self) -> Path:
        return Path(self.out or Path(self.root) / "compare")


def run_compare(cfg: CompareConfig, *, resources: Resources | None = None) -> dict[str, Any]:
    """Run (or reuse) every report the comparison needs, then write compare.{json,md} under the folder."""
    root = Path(cfg.root)
    res = resources or load_resources(str(root / "model"), str(root / "sae"))
    base = DemoConfig(
        root=cfg.root,
        n_countries=cfg.n_countries,
        steps=cfg.steps,
        threads=cfg.threads,
        workers=cfg.workers,
        progress=cfg.progress,
    )
    lrs = cfg.candidates
    first = cfg.seeds[0]
    tried: list[tuple[str, dict[str, float], DemoReport]] = []  # (folder, lr per method, report)
    for i in range(max(len(v) for v in lrs.values())):
        rates = {m: lrs[m][min(i, len(lrs[m]) - 1)] for m in PREFERENCE}
        run = replace(base, methods=PREFERENCE, lr=rates["yapo"], bipo_lr=rates["bipo"], seed=first)
        tried.append((f"lr-{i}", rates, _report(cfg, res, f"lr-{i}", run)))
    chosen: dict[str, dict[str, Any]] = {}
    for m in PREFERENCE:
        scores = [(_selection(rep, m), rates[m], folder, rep) for folder, rates, rep in tried]
        score, lr, folder, rep = max(scores, key=lambda t: (t[0], -t[1]))
        chosen[m] = {
            "lr": lr,
            "validation": score,
            "candidates": {f"{t[1]:g}": t[0] for t in scores},
            "reports": {first: rep},
            "folders": {first: folder},
        }
    baselines = _report(cfg, res, "baselines", replace(base, methods=BASELINES, seed=first))
    for seed in cfg.seeds[1:]:
        run = replace(
            base, methods=PREFERENCE, lr=chosen["yapo"]["lr"], bipo_lr=chosen["bipo"]["lr"], seed=seed
        )
        rep = _report(cfg, res, f"seed-{seed}", run)
        for m in PREFERENCE:
            chosen[m]["reports"][seed] = rep
            chosen[m]["folders"][seed] = f"seed-{seed}"
    result = json.loads(json.dumps(_aggregate(cfg, chosen, baselines)))  # what compare.json holds
    folder = cfg.folder
    write_atomic(folder / "compare.json", json.dumps(result, indent=1).encode())
    write_atomic(folder / "compare.md", render_markdown(result).encode())
    return result


def _report(cfg: CompareConfig, res: Resources, name: str, run: DemoConfig) -> DemoReport:
    """The report of one run, from its folder if it finished before (the comparison resumes)."""
    folder = cfg.folder / name
    run = replace(run, out=str(folder))
    done = folder / "report.json"
    if done.is_file():
        report = DemoReport.from_dict(json.loads(done.read_text()))
        if _settings(report.config) == _settings(json.loads(json.dumps(asdict(run)))):
            return report
    return build_report(run, resources=res)


def _settings(config: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in config.items() if k not in ("progress", "workers")}  # not in the numbers


def _selection(report: DemoReport, method: str) -> float:
    """Mean non-localized accuracy on validation topics at each vector's default strength."""
    return _mean(report.selection_nonlocalized_at_default[method].values())


def _aggregate(
    cfg: CompareConfig, chosen: Mapping[str, Mapping[str, Any]], baselines: DemoReport
) -> dict[str, Any]:
    countries = list(baselines.countries)
    tables: dict[str, Any] = {}
    for view in VIEWS:
        rows: dict[str, Any] = {"base": _cells([baselines], "base", view, countries)}
        for m in BASELINES:
            rows[m] = _cells([baselines], m, view, countries)
        for m in PREFERENCE:
            rows[m] = _cells(list(chosen[m]["reports"].values()), m, view, countries)
        tables[view] = rows
    convergence = {
        m: {
            f"{t:g}": {
                c: [rep.steps_to_loss[f"{t:g}"][m][c] for rep in chosen[m]["reports"].values()]
                for c in countries
            }
            for t in CONVERGENCE_THRESHOLDS
        }
        for m in PREFERENCE
    }
    final_loss = {
        m: {c: [rep.final_loss[m][c] for rep in chosen[m]["reports"].values()] for c in countries}
        for m in PREFERENCE
    }
    agreement = {
        m: {c: _seed_cosine(cfg, m, c, list(chosen[m]["folders"].values())) for c in countries}
        for m in PREFERENCE
    }
    return {
        "world": cfg.root,
        "countries": countries,
        "seeds": list(cfg.seeds),
        "split": baselines.split,
        "learning_rates": {
            m: {k: chosen[m][k] for k in ("lr", "validation", "candidates", "folders")} for m in PREFERENCE
        },
        "table7": tables,
        "steps_to_loss": convergence,
        "final_loss": final_loss,
        "seed_cosine": agreement,
    }


def _cells(
    reports: Sequence[DemoReport], method: str, view: str, countries: Sequence[str]
) -> dict[str, dict[str, dict[str, float]]]:
    """{country | "mean": {kind: {"mean", "sd", "n"}}} over the reports (one per seed)."""
    out: dict[str, dict[str, dict[str, float]]] = {}
    for c in [*countries, "mean"]:
        out[c] = {}
        kinds = [k for k in (*KINDS, "nonlocalized_own") if k in reports[0].table7[view][method][c]]
        for k in (*kinds, "lost") if method != "base" else kinds:
            values = [rep.table7[view][method][c][k] for rep in reports]
            out[c][k] = _spread(values)
    return out


def _spread(values: Sequence[float]) -> dict[str, float]:
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return {"mean": _mean(values), "sd": sd, "n": len(values)}


def _mean(values: Any) -> float:
    vals = [float(v) for v in values]
    return sum(vals) / len(vals) if vals else float("nan")


def _seed_cosine(cfg: CompareConfig, method: str, country: str, folders: Sequence[str]) -> float | None:
    """Mean pairwise cosine between the seeds' vectors for one (method, country): 1 = the same direction."""
    vecs = []
    for name in folders:
        v = load_vector(vector_path(cfg.folder / name / "vectors", vector_name(method, country)))
        vecs.append(v.code_vector() if v.space == "sae" else v.dense)
    if len(vecs) < 2:
        return None
    return _mean(float(torch.nn.functional.cosine_similarity(a, b, dim=0)) for a, b in combinations(vecs, 2))


def _pct(cell: Mapping[str, float]) -> str:
    if cell["n"] > 1:
        return f"{100 * cell['mean']:.1f} ± {100 * cell['sd']:.1f}"
    return f"{100 * cell['mean']:.1f}"


def _count(cell: Mapping[str, float]) -> str:
    return f"{cell['mean']:.1f}" if cell["n"] > 1 else f"{cell['mean']:.0f}"


def render_markdown(result: Mapping[str, Any]) -> str:
    """compare.md: the Table 7 analog at strength 1 and at the default strength, rates, convergence, stability."""
    countries = list(result["countries"])
    methods = ["base", *BASELINES, *PREFERENCE]
    seeds = ", ".join(str(s) for s in result["seeds"])
    lines = [
        f"# YaPO vs BiPO vs CAA vs SAS on `{result['world']}`",
        "",
        f"Test-topic MCQ accuracy (%), split `{result['split']}`; YaPO and BiPO mean ± sd over seeds {seeds},",
        "CAA / SAS / unsteered once (no seed, no learning rate). Written by `steer demo compare`.",
        "",
        "Learning rates (chosen on validation topics: mean non-localized accuracy at the default strength):",
        "",
    ]
    for m in PREFERENCE:
        info = result["learning_rates"][m]
        tried = ", ".join(f"{lr}: {100 * v:.1f} %" for lr, v in info["candidates"].items())
        lines.append(f"- {LABELS[m]}: **{info['lr']:g}** (tried {tried})")
    titles = {"strength_1": "at strength 1 (the strength trained at)", "default": "at each vector's default"}
    for view in VIEWS:
        table = result["table7"][view]
        lines += ["", f"## {titles[view]}", ""]
        names = " / ".join(LABELS[m] for m in methods)
        lost_names = " / ".join(LABELS[m] for m in methods[1:])
        lines.append(f"Accuracy: {names}; neutral facts lost (of the held-out ones): {lost_names}.")
        lines.append("")
        kinds = [k for k in (*KINDS, "nonlocalized_own") if k in table["base"]["mean"]]
        heads = {"nonlocalized_own": "non-localized, own answer", "nonlocalized": "non-localized"}
        lines.append("| country | " + " | ".join(heads.get(k, k) for k in kinds) + " | facts lost |")
        lines.append("|---|" + "---|" * (len(kinds) + 1))
        for c in [*countries, "mean"]:
            cells = [" / ".join(_pct(table[m][c][k]) for m in methods) for k in kinds]
            cells.append(" / ".join(_count(table[m][c]["lost"]) for m in methods[1:]))
            lines.append(f"| {c} | " + " | ".join(cells) + " |")
    lines += ["", "## Convergence: steps to a trailing-mean loss (per seed; - = not reached)", ""]
    lines.append(
        "| method | country | " + " | ".join(f"loss {t}" for t in result["steps_to_loss"]["yapo"]) + " |"
    )
    lines.append("|---|---|" + "---|" * len(result["steps_to_loss"]["yapo"]))
    for m in PREFERENCE:
        for c in countries:
            cells = [
                ", ".join("-" if v is None else str(v) for v in by_country[c])
                for by_country in result["steps_to_loss"][m].values()
            ]
            lines.append(f"| {LABELS[m]} | {c} | " + " | ".join(cells) + " |")
    lines += ["", "## Stability over seeds", "", "| method | country | final loss | cosine between seeds |"]
    lines.append("|---|---|---|---|")
    for m in PREFERENCE:
        for c in countries:
            losses = ", ".join(f"{v:.3f}" for v in result["final_loss"][m][c])
            cos = result["seed_cosine"][m][c]
            lines.append(f"| {LABELS[m]} | {c} | {losses} | {'-' if cos is None else f'{cos:.3f}'} |")
    return "\n".join(lines) + "\n"
