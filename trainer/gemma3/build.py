"""`steer demo build --preset gemma3-270m`: the real-model world, in the culture world's layout.

`<out>/`: `model/` (the converted Gemma 3 270M), `data/` (mcq.jsonl, pairs/<country>.jsonl, neutral.jsonl = the
real facts the model knows, general.jsonl = cultural items outside the topic table), `sae/` (sae-lens, trained on
real text at a measured layer), `vectors/culture/<country>.safetensors` (YaPO) and `vectors/baselines/`,
`report.{json,md}` (`steer demo report`'s, plus the generalization set) and `world.json`.

Each stage writes `<out>/.stages/<stage>.json` (its result and wall time) only when it is complete, so an
interrupted build resumes at the first stage without one.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from trainer.gemma3.data import GENERAL_SPLIT
from trainer.gemma3.sae import Architecture
from trainer.world.build import write_jsonl

STAGES = ("model", "data", "layer", "sae", "vectors", "generalization")


@dataclass
class Gemma3Config:
    """Every knob of the real-model build. `quick()` is the end-to-end smoke budget."""

    seed: int = 0
    countries: list[str] = field(default_factory=lambda: ["morocco", "egypt", "ksa", "levantine"])
    candidate_layers: tuple[int, ...] = (3, 5, 7, 9, 11)
    probe_countries: tuple[str, ...] = ("morocco", "egypt")
    sae_layer: int | None = None  # None: the probe's best layer
    # the SAE (trainer/gemma3/sae.py): the corpus's activations computed once, seen for several epochs
    sae_expansion: int = 4
    sae_training_samples: int = 1_000_000
    sae_batch: int = 512
    sae_lr: float = 1e-3
    sae_architecture: Architecture = "batchtopk"  # saved as JumpReLU: the server's element-wise fast path
    sae_k: float = 32.0  # batchtopk: mean active features per position
    sae_sparsity_coefficient: float = 6.0  # standard: L1; jumprelu: L0
    sae_context: int = 128
    sae_eval_rows: int = 48  # 6,095 held-out positions: on 2,032, a feature firing once in 3,000 looks dead
    steps: int = 150
    batch_size: int = 32
    # The culture world's learning rates (DemoConfig: YaPO 1e-2, BiPO 0.1, chosen there on validation topics)
    # rescaled to this model's residual stream, not swept here: Gemma 3's median residual norm at layer 6 is
    # ~3,300 against ~85 there, so BiPO's dense vector needs ~39× the step (0.1 → 4); YaPO's SAE codes move the
    # residual by a decoder row (norm ≈ median |h| / √d: 4 % of |h| here, 10 % there), so ~2.5× (1e-2 → 2.5e-2).
    lr: float = 2.5e-2
    bipo_lr: float = 4.0
    strengths: list[float] = field(default_factory=lambda: [0.0, 0.5, 1.0, 2.0, 4.0])
    # as WorldConfig.threads: beside other torch jobs, 2 threads on 2 cores slow down many-fold
    threads: int = 1

    @classmethod
    def quick(cls, seed: int = 0) -> Gemma3Config:
        """One country on a budget that still measures something (a trained SAE, 60 steps, four strengths)."""
        return cls(
            seed=seed,
            countries=["morocco"],
            candidate_layers=(4, 6, 8),
            probe_countries=("morocco",),
            sae_training_samples=500_000,
            steps=60,
            strengths=[0.0, 0.5, 1.0, 2.0],
        )


class _Stages:
    """Stage results under `<out>/.stages/`: a finished stage is read back, a missing one is run and recorded."""

    def __init__(self, out: Path) -> None:
        self.dir = out / ".stages"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.seconds: dict[str, float] = {}

    def run(self, name: str, fn: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        marker = self.dir / f"{name}.json"
        if marker.is_file():
            done = json.loads(marker.read_text())
            self.seconds[name] = done["seconds"]
            print(f"[gemma3] {name}: done before ({done['seconds']} s)", file=sys.stderr, flush=True)
            return dict(done["result"])
        print(f"[gemma3] {name} ...", file=sys.stderr, flush=True)
        start = time.perf_counter()
        result = fn()
        self.seconds[name] = round(time.perf_counter() - start, 1)
        marker.write_text(json.dumps({"result": result, "seconds": self.seconds[name]}, indent=1) + "\n")
        print(f"[gemma3] {name}: {self.seconds[name]} s", file=sys.stderr, flush=True)
        return result


def build_gemma3(out: Path | str, config: Gemma3Config | None = None) -> dict[str, Any]:
    """Build (or resume) the real-model world in `out`; returns world.json's content."""
    import torch

    config = config or Gemma3Config()
    threads = torch.get_num_threads()
    torch.set_num_threads(config.threads)
    try:
        return _build(Path(out), config)
    finally:
        torch.set_num_threads(threads)


def _build(out: Path, cfg: Gemma3Config) -> dict[str, Any]:
    started = time.perf_counter()
    stages = _Stages(out)
    model_info = stages.run("model", lambda: _model_stage(out))
    loaded: dict[str, Any] = {}

    def lm() -> tuple[Any, Any]:  # loaded once, only by the stages that run
        if not loaded:
            from transformers import AutoModelForCausalLM, AutoTokenizer

            loaded["tokenizer"] = AutoTokenizer.from_pretrained(out / "model")
            loaded["model"] = AutoModelForCausalLM.from_pretrained(
                out / "model", attn_implementation="eager"
            ).eval()
        return loaded["model"], loaded["tokenizer"]

    data = stages.run("data", lambda: _data_stage(out, cfg, *lm()))
    layer = stages.run("layer", lambda: _layer_stage(out, cfg, *lm()))
    sae = stages.run("sae", lambda: _sae_stage(out, cfg, int(layer["layer"]), *lm()))
    loaded.clear()  # the report loads its own
    vectors = stages.run("vectors", lambda: _vectors_stage(out, cfg))
    general = stages.run("generalization", lambda: _generalization_stage(out, cfg))
    stages.seconds["total (this run)"] = round(time.perf_counter() - started, 1)
    summary = {
        "preset": "gemma3-270m",
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "countries": cfg.countries,
        "model": model_info,
        "data": data,
        "layer": layer,
        "sae": sae,
        "vectors": vectors,
        "generalization": general,
        "seconds": stages.seconds,
        "versions": _versions(),
        "config": asdict(cfg),
    }
    (out / "world.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    return summary


def _versions() -> dict[str, str]:
    import platform

    import sae_lens
    import torch
    import transformers

    from vectors.device import cpu_name

    return {
        "cpu": cpu_name(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "sae_lens": sae_lens.__version__,
    }


# --------------------------------------------------------------------------------------------------------
# stages


def _model_stage(out: Path) -> dict[str, Any]:
    """The converted folder (cached per machine), linked or copied into `<out>/model`."""
    from trainer.gemma3.convert import converted_model

    folder, conversion = converted_model()
    target = out / "model"
    if target.exists():
        shutil.rmtree(target)
    tmp = out / "model.tmp"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    for f in folder.iterdir():
        try:
            os.link(f, tmp / f.name)  # same file system: no second gigabyte
        except OSError:
            shutil.copy2(f, tmp / f.name)
    tmp.rename(target)
    config = json.loads((target / "config.json").read_text())
    return {
        "path": "model",
        "architecture": config["architectures"][0],
        "hidden_size": config["hidden_size"],
        "num_layers": config["num_hidden_layers"],
        "vocab_size": config["vocab_size"],
        "conversion": conversion.to_dict(),
    }


def _data_stage(out: Path, cfg: Gemma3Config, model: Any, tokenizer: Any) -> dict[str, Any]:
    from trainer.gemma3.data import culture_data, general_rows, known_facts

    data = out / "data"
    culture = culture_data(cfg.seed)
    sizes: dict[str, Any] = {"mcq": write_jsonl(data / "mcq.jsonl", culture.mcq)}
    sizes["pairs_per_country"] = {
        c: write_jsonl(data / "pairs" / f"{c}.jsonl", rows) for c, rows in culture.pairs.items()
    }
    sizes["general"] = write_jsonl(data / "general.jsonl", general_rows())
    facts = known_facts(model, tokenizer)
    sizes["neutral"] = write_jsonl(data / "neutral.jsonl", facts.rows)
    return {
        "sizes": sizes,
        "topics": culture.splits,
        "facts": {
            "total": facts.total,
            "known": len(facts.rows),
            "dropped": facts.total - len(facts.rows),
            "held_out": len(facts.rows) // 2,  # odd-numbered: the half retention is measured on
            "by_category": {c: {"known": k, "total": n} for c, (k, n) in facts.by_category.items()},
        },
    }


def _layer_stage(out: Path, cfg: Gemma3Config, model: Any, tokenizer: Any) -> dict[str, Any]:
    from trainer.eval.items import load_mcq
    from trainer.gemma3.layer import best_layer, probe_layers

    mcq = load_mcq(out / "data" / "mcq.jsonl")
    probes = probe_layers(model, tokenizer, mcq, cfg.probe_countries, cfg.candidate_layers)
    chosen = cfg.sae_layer if cfg.sae_layer is not None else best_layer(probes)
    return {
        "layer": chosen,
        "chosen_by": "given" if cfg.sae_layer is not None else "probe",
        "probe": [asdict(p) for p in probes],
    }


def _sae_stage(out: Path, cfg: Gemma3Config, layer: int, model: Any, tokenizer: Any) -> dict[str, Any]:
    from trainer.gemma3.corpus import paragraphs, sae_rows
    from trainer.gemma3.sae import SaeTraining, collect_activations, norm_cap, train_sae_on_activations
    from trainer.world.sae_train import measure_sae

    rows, eval_rows = sae_rows(tokenizer, cfg.sae_context, cfg.sae_eval_rows, cfg.seed)
    texts = paragraphs()
    start = time.perf_counter()
    acts = collect_activations(model, rows, layer)
    collect_seconds = time.perf_counter() - start
    cap = norm_cap(acts)
    norms = acts.norm(dim=-1)
    kept = acts[norms <= cap]
    spec = SaeTraining(
        d_sae=int(model.config.hidden_size) * cfg.sae_expansion,
        lr=cfg.sae_lr,
        samples=cfg.sae_training_samples,
        batch=cfg.sae_batch,
        seed=cfg.seed,
        architecture=cfg.sae_architecture,
        k=cfg.sae_k,
        sparsity_coefficient=cfg.sae_sparsity_coefficient,
    )
    tmp = out / "sae.tmp"
    if tmp.exists():
        shutil.rmtree(tmp)
    train_sae_on_activations(kept, layer, spec, tmp, model_name="gemma3-270m")
    stats = measure_sae(model, eval_rows, tmp, layer, max_norm=cap)
    if (out / "sae").exists():
        shutil.rmtree(out / "sae")
    tmp.rename(out / "sae")
    return {
        "path": "sae",
        "architecture": cfg.sae_architecture,
        "k": cfg.sae_k if cfg.sae_architecture == "batchtopk" else None,
        "layer": layer,
        "corpus": "CPython's pydoc topics + standard-library docstrings (trainer/gemma3/corpus.py)",
        "corpus_paragraphs": {"train": len(texts) - len(texts[::10]), "held_out": len(texts[::10])},
        "activations": {
            "positions": int(acts.shape[0]),
            "outliers_dropped": int(acts.shape[0] - kept.shape[0]),
            "norm_cap": round(cap, 1),
            "seconds": round(collect_seconds, 1),
        },
        "residual_norm_median": round(float(norms.median()), 1),
        "training_samples": spec.samples,
        "epochs": round(spec.samples / kept.shape[0], 1),
        **{k: round(v, 4) if isinstance(v, float) else v for k, v in asdict(stats).items()},
        "dead_fraction": round(stats.dead_features / stats.d_sae, 4),
    }


def _vectors_stage(out: Path, cfg: Gemma3Config) -> dict[str, Any]:
    """`steer demo report`'s training and evaluation, unchanged, on this world."""
    from trainer.demo.report import DemoConfig, build_report

    demo = DemoConfig(
        root=str(out),
        countries=list(cfg.countries),
        steps=cfg.steps,
        batch_size=cfg.batch_size,
        lr=cfg.lr,
        bipo_lr=cfg.bipo_lr,
        seed=cfg.seed + 11,
        strengths=list(cfg.strengths),
        threads=cfg.threads,
        workers=1,
    )
    report = build_report(demo)
    return {"report": "report.json", "seconds": report.seconds}


def _generalization_stage(out: Path, cfg: Gemma3Config) -> dict[str, Any]:
    """Each vector on the cultural items outside the topic table (never trained on): accuracy toward its own
    country, unsteered and at its default strength and at 1 (the vector files are not rewritten)."""
    from trainer.demo.report import METHODS, vector_name
    from trainer.eval.items import load_mcq
    from trainer.eval.run import EvalConfig, evaluate_vectors
    from vectors.io import read_metadata
    from vectors.names import vector_path

    names = [vector_name(m, c) for m in METHODS for c in cfg.countries]
    defaults = {n: read_metadata(vector_path(out / "vectors", n)).default_strength for n in names}
    strengths = sorted({1.0, *defaults.values()})
    ev = evaluate_vectors(
        EvalConfig(
            model=str(out / "model"),
            sae=str(out / "sae"),
            catalog=str(out / "vectors"),
            vectors=names,
            data=str(out / "data" / "general.jsonl"),
            strengths=strengths,
            splits=[GENERAL_SPLIT],
            write_back=False,
            progress=True,
        ),
        mcq=load_mcq(out / "data" / "general.jsonl"),
        neutral=[],
    )
    rows: dict[str, Any] = {}
    for n in names:
        entry = ev.vectors[n]
        country = n.rsplit("/", 1)[1].split("-")[-1]
        base = ev.unsteered[country].acc(GENERAL_SPLIT, "nonlocalized")
        at_default = entry.by_strength[defaults[n]].acc(GENERAL_SPLIT, "nonlocalized")
        at_1 = entry.by_strength[1.0].acc(GENERAL_SPLIT, "nonlocalized")
        rows[n] = {
            "country": country,
            "unsteered": round(base, 4),
            "default_strength": defaults[n],
            "at_default": round(at_default, 4),
            "at_1": round(at_1, 4),
            "gain_at_default": round(at_default - base, 4),
            "gain_at_1": round(at_1 - base, 4),
        }
    items = {it.topic for it in load_mcq(out / "data" / "general.jsonl")}
    result = {"items": len(items), "vectors": rows}
    _add_to_report(out, result)
    return result


def _add_to_report(out: Path, general: dict[str, Any]) -> None:
    """The generalization table into report.json and report.md (written by the demo report before)."""
    from vectors.io import write_atomic

    report = json.loads((out / "report.json").read_text())
    report["generalization"] = general
    write_atomic(out / "report.json", json.dumps(report, indent=1).encode())
    lines = [
        "",
        f"## Generalization: {general['items']} cultural items outside the topic table (non-localized)",
        "",
        "| vector | unsteered | default (strength) | gain | strength 1 | gain |",
        "|---|---|---|---|---|---|",
    ]
    for name, r in general["vectors"].items():
        lines.append(
            f"| {name} | {r['unsteered']:.3f} | {r['at_default']:.3f} ({r['default_strength']:g}) | "
            f"{r['gain_at_default']:+.3f} | {r['at_1']:.3f} | {r['gain_at_1']:+.3f} |"
        )
    md = (out / "report.md").read_text() + "\n".join(lines) + "\n"
    write_atomic(out / "report.md", md.encode())
