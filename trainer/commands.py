"""`steer` sub-commands of the trainer package: `demo build` (culture world), `demo report`, `demo compare`,
`train`, `eval` — argparse wiring onto `WorldConfig`, `DemoConfig`, `CompareConfig`, `TrainConfig`, `EvalConfig`.

`register` is what `steer_cli` calls. Handlers import torch and friends only when they run, so `steer --help`
stays fast.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any


def register(subparsers: Any) -> None:
    _register_demo(subparsers)
    register_train(subparsers)
    register_eval(subparsers)


def _register_demo(subparsers: Any) -> None:
    """`steer demo build [--out var/demo] [--seed N] [--preset default|small|wide]`: the culture world."""
    demo = subparsers.add_parser("demo", help="the embedded culture world (tiny model + SAE + data)")
    actions = demo.add_subparsers(dest="demo_command", metavar="ACTION", required=True)
    build = actions.add_parser(
        "build",
        help="build the culture world: data, tokenizer, tiny Llama, SAE (deterministic from --seed)",
        description="Build the culture world into OUT (via OUT.tmp, renamed when complete).",
    )
    build.add_argument("--out", default="var/demo", help="output folder (default: var/demo)")
    build.add_argument("--seed", type=int, default=0, help="seed of everything in the build (default: 0)")
    build.add_argument(
        "--preset",
        choices=("default", "small", "wide", "gemma3-270m", "gemma3-270m-quick"),
        default="default",
        help="world size: default (the demo), small (tests, seconds), wide (d_model 256, 16x SAE; ~16 min); "
        "gemma3-270m: the real model from sparse-steer[gemma3] with an SAE and vectors trained on it "
        "(docs/real-model-results.md), gemma3-270m-quick: the same for one country on a smaller budget",
    )
    build.add_argument("--small", action="store_true", help="same as --preset small")
    build.add_argument(
        "--sae-layer", type=int, default=None, help="decoder layer the SAE reads (default: the preset's)"
    )
    build.add_argument(
        "--sae-expansion", type=int, default=None, help="SAE width / d_model (default: the preset's)"
    )
    build.add_argument(
        "--shared-answers",
        type=float,
        default=None,
        help="chance per topic that an Arabic-group country shares a group-mate's answer (default: the preset's)",
    )
    build.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch threads of the build and report (default: the preset's; 1 beside other torch jobs)",
    )
    build.add_argument(
        "--workers",
        type=int,
        default=None,
        help="processes of the demo report; the vectors do not depend on it (default: the CPU count, at most 4)",
    )
    build.add_argument(
        "--prewarm-cache",
        metavar="DIR",
        help="compile the server's decode step into this inductor cache (STEER_COMPILE_CACHE_DIR) while the "
        "language model trains, so that the first `steer serve` with it starts sooner",
    )
    build.add_argument(
        "--no-report",
        action="store_true",
        help="stop after the world: skip training and evaluating the demo vectors (`steer demo report`)",
    )
    build.set_defaults(handler=_demo_build)
    register_demo_report(actions)  # vectors + report.{json,md}
    register_demo_compare(actions)  # the Table 7 analog over seeds: compare.{json,md}


def _demo_build(args: Any) -> int:
    from dataclasses import replace

    from trainer.world import WorldConfig, build_world

    preset = "small" if args.small else args.preset
    if preset.startswith("gemma3-270m"):
        return _gemma3_build(args, quick=preset.endswith("-quick"))
    presets = {"default": WorldConfig, "small": WorldConfig.small, "wide": WorldConfig.wide}
    given = {
        "sae_layer": args.sae_layer,
        "sae_expansion": args.sae_expansion,
        "shared_answers": args.shared_answers,
        "threads": args.threads,
    }
    config = replace(presets[preset](seed=args.seed), **{k: v for k, v in given.items() if v is not None})
    summary = build_world(args.out, config, prewarm_cache=args.prewarm_cache)
    print(json.dumps(_headline(summary), indent=2))
    failed = [name for name, ok in summary["checks"].items() if not ok]
    if failed:
        print(f"warning: world built but some checks failed: {', '.join(failed)}")
    print(f"world written to {args.out} ({summary['seconds']['total']:.0f} s)")
    if args.no_report or preset != "default":
        return 0
    # The demo catalog: one vector per method for four countries, evaluated on held-out topics.
    from trainer.demo.report import DemoConfig, build_report

    workers = args.workers if args.workers is not None else default_workers()
    report = build_report(DemoConfig(root=args.out, threads=config.threads, workers=workers))
    print(json.dumps({"targets": report.targets.to_dict(), "seconds": report.seconds}, indent=1))
    print(f"vectors in {args.out}/vectors, report in {args.out}/report.md")
    return 0


def _gemma3_build(args: Any, *, quick: bool) -> int:
    """The real-model world (trainer/gemma3/build.py): resumable stages, then the report."""
    from dataclasses import replace

    from trainer.gemma3.build import Gemma3Config, build_gemma3

    config = Gemma3Config.quick(args.seed) if quick else Gemma3Config(seed=args.seed)
    given = {"sae_layer": args.sae_layer, "sae_expansion": args.sae_expansion, "threads": args.threads}
    config = replace(config, **{k: v for k, v in given.items() if v is not None})
    summary = build_gemma3(args.out, config)
    print(json.dumps({k: summary[k] for k in ("layer", "sae", "seconds")}, indent=1))
    print(f"world, vectors and report in {args.out} (report.md)")
    return 0


def _headline(summary: dict[str, Any]) -> dict[str, Any]:
    """The figures worth printing after a build (world.json has everything)."""
    return {
        "countries": len(summary["countries"]),
        "topics": {k: len(v) for k, v in summary["topics"].items()},
        "accuracy": summary["accuracy"],
        "chance": summary["chance"],
        "sae": {k: summary["sae"][k] for k in ("hook_name", "d_sae", "fve", "l0", "dead_features")},
        "lm": {k: summary["sizes"][k] for k in ("lm_parameters", "lm_steps")},
        "seconds": summary["seconds"],
        "checks": summary["checks"],
    }


def _device_flags(group: Any) -> None:
    """`--device` / `--dtype`, chosen as `steer serve` chooses them (flag, else STEER_DEVICE / STEER_DTYPE, else auto)."""
    group.add_argument(
        "--device",
        help="auto, cpu, cuda, cuda:N, mps (default: $STEER_DEVICE, else auto: the GPU if there is one)",
    )
    group.add_argument(
        "--dtype",
        choices=["auto", "float32", "bfloat16", "float16", "float64"],
        help="default: $STEER_DTYPE, else auto (bfloat16 on a GPU, float32 on the CPU)",
    )


def _placement(args: argparse.Namespace) -> tuple[str, str]:
    """(device, dtype) names the run uses, `auto` and the environment resolved."""
    from vectors.device import DEVICE_ENV, DTYPE_ENV, dtype_name, requested, resolve_device, resolve_dtype

    device = resolve_device(requested(args.device, DEVICE_ENV))
    return str(device), dtype_name(resolve_dtype(requested(args.dtype, DTYPE_ENV), device))


def register_train(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "train",
        help="train a steering vector (yapo, bipo, caa, sas) from preference pairs",
        description="Train one steering vector and write it atomically to CATALOG/<namespace>/<leaf>.safetensors.",
    )
    p.add_argument("--method", required=True, choices=["yapo", "bipo", "caa", "sas"])
    p.add_argument("--model", required=True, help="HF model id or local folder")
    p.add_argument("--sae", help="sae-lens folder or release/id (required for yapo and sas)")
    p.add_argument(
        "--layer", type=int, help="decoder block whose output is steered (default: the SAE's layer)"
    )
    p.add_argument("--data", required=True, help="JSONL / CSV / Parquet file or datasets.save_to_disk folder")
    p.add_argument("--name", required=True, help="vector name, e.g. culture/morocco")
    p.add_argument("--out", required=True, help="catalog root folder")
    p.add_argument("--prompt-col", default="prompt")
    p.add_argument("--chosen-col", default="chosen")
    p.add_argument("--rejected-col", default="rejected")
    p.add_argument(
        "--where", action="append", default=[], metavar="COL=VALUE", help="keep rows where COL == VALUE"
    )
    p.add_argument(
        "--target", help="what the vector steers toward (recorded; `steer eval` uses it as the country)"
    )
    g = p.add_argument_group("optimisation (yapo, bipo)")
    g.add_argument("--beta", type=float, default=0.1)
    g.add_argument("--lr", type=float, default=5e-4)
    g.add_argument("--epochs", type=int, default=20)
    g.add_argument("--max-steps", type=int, help="total optimiser steps (overrides --epochs)")
    g.add_argument("--batch-size", type=int, default=4)
    g.add_argument("--warmup-steps", type=int, help="default: min(100, 10%% of the steps)")
    g.add_argument("--weight-decay", type=float, default=0.0)
    g.add_argument("--grad-clip", type=float, default=1.0)
    g.add_argument("--seed", type=int, default=11)
    g.add_argument(
        "--reference-mode",
        action="store_true",
        help="reference implementation's cost: SAE round trip per token, pi_0 recomputed every step",
    )
    g = p.add_argument_group("retention (yapo, bipo)")
    g.add_argument(
        "--retain",
        help="facts (prompt, options, answer) whose answers the vector must not break, e.g. the neutral set",
    )
    g.add_argument("--retain-weight", type=float, default=1.0, help="weight of the retention penalty")
    g.add_argument("--retain-batch-size", type=int, default=16, help="retention pairs scored per step")
    g.add_argument(
        "--retain-margin",
        type=float,
        help="nats each answer must stay ahead of a wrong option (default: the unsteered model's whole lead)",
    )
    g = p.add_argument_group("data length")
    g.add_argument("--max-length", type=int, default=512)
    g.add_argument("--overlong", choices=["error", "skip", "truncate"], default="error")
    g = p.add_argument_group("sparsity")
    g.add_argument("--top-k", type=int, help="keep the k largest-magnitude entries (yapo, sas)")
    g.add_argument("--l1", type=float, default=0.0, help="L1 strength (proximal: exact zeros)")
    g.add_argument("--tau", type=float, default=0.0, help="sas: drop entries below tau * max|v|")
    g = p.add_argument_group("bookkeeping")
    g.add_argument(
        "--log-dir", help="where the JSON log, loss PNG and checkpoint go (default: OUT/../train-logs)"
    )
    g.add_argument("--log-every", type=int, default=10)
    g.add_argument("--checkpoint-every", type=int, default=100)
    g.add_argument("--resume", action="store_true", help="continue from the run's checkpoint if there is one")
    _device_flags(g)
    g.add_argument("--no-progress", action="store_true")
    p.set_defaults(handler=_train)


def _train(args: argparse.Namespace) -> int:
    from trainer.config import TrainConfig
    from trainer.data import Columns, DataError, parse_where
    from trainer.effect import describe
    from trainer.train import train_vector
    from vectors.errors import SteerError

    try:
        device, dtype = _placement(args)
        cfg = TrainConfig(
            method=args.method,
            model=args.model,
            sae=args.sae,
            layer=args.layer,
            data=args.data,
            name=args.name,
            out=args.out,
            columns=Columns(args.prompt_col, args.chosen_col, args.rejected_col),
            where=parse_where(args.where),
            beta=args.beta,
            lr=args.lr,
            epochs=args.epochs,
            max_steps=args.max_steps,
            batch_size=args.batch_size,
            warmup_steps=args.warmup_steps,
            weight_decay=args.weight_decay,
            grad_clip=args.grad_clip,
            seed=args.seed,
            max_length=args.max_length,
            overlong=args.overlong,
            top_k=args.top_k,
            l1=args.l1,
            tau=args.tau,
            retain=args.retain,
            retain_weight=args.retain_weight,
            retain_batch_size=args.retain_batch_size,
            retain_margin=args.retain_margin,
            log_every=args.log_every,
            log_dir=args.log_dir,
            checkpoint_every=args.checkpoint_every,
            resume=args.resume,
            device=device,
            dtype=dtype,
            reference_mode=args.reference_mode,
            progress=not args.no_progress,
            target=args.target,
        )
        result = train_vector(cfg)
    except (DataError, SteerError, ValueError, OSError) as exc:
        print(f"steer train: error: {exc}", file=sys.stderr)
        return 2
    summary = {
        "vector": str(result.path),
        "nnz": result.vector.nnz if result.vector else None,
        "steps": result.steps,
        "final_loss": result.final_loss,
        "steps_to_loss_0.1": result.steps_to_loss(0.1) if result.losses else None,
        "pairs_per_second": result.pairs_per_second,
        "seconds": round(result.seconds, 2),
        "device": device,
        "dtype": dtype,
        "data": result.encode_stats,
        "log": str(result.log_path) if result.log_path else None,
        "effect": result.effect.to_dict() if result.effect else None,
    }
    print(json.dumps(summary, indent=1))
    if result.effect is not None:  # on stderr: stdout stays one JSON document
        warn = "warning: " if result.effect.weak else ""
        print(f"steer train: {warn}{describe(result.effect)}", file=sys.stderr)
    return 0


def register_eval(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "eval",
        help="evaluate steering vectors: MCQ accuracy per strength, retention, RCA/PNLG",
        description="Evaluate vectors of a catalog, write a JSON report + strength-sweep PNG, and write the "
        "headline numbers, strength_range and default_strength back into each vector file.",
    )
    p.add_argument("--model", required=True)
    p.add_argument("--sae", help="needed for SAE-space vectors")
    p.add_argument("--catalog", required=True)
    p.add_argument(
        "--vectors", required=True, help="comma-separated names, e.g. culture/morocco,culture/egypt"
    )
    p.add_argument(
        "--data",
        required=True,
        help="MCQ JSONL: prompt, options {country: answer}, country, localized, split",
    )
    p.add_argument("--neutral", help="neutral facts JSONL (prompt, options, answer) for retention")
    p.add_argument("--strengths", type=_floats, default=[-2.0, -1.0, 0.0, 0.5, 1.0, 1.5, 2.0])
    p.add_argument("--splits", help="only score these topic splits (comma-separated, e.g. test)")
    p.add_argument(
        "--target",
        action="append",
        default=[],
        metavar="NAME=COUNTRY",
        help="country a vector steers toward (default: metadata training.target, else the name's leaf)",
    )
    p.add_argument("--alpha", type=float, default=0.5, help="PNLG alpha")
    p.add_argument("--out", required=True, help="report JSON (the sweep PNG is written next to it)")
    p.add_argument("--no-write-back", action="store_true", help="leave the vector files untouched")
    _device_flags(p)
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(handler=_eval)


def _eval(args: argparse.Namespace) -> int:
    import math

    from trainer.data import DataError, parse_where
    from trainer.eval.run import EvalConfig, evaluate_vectors
    from trainer.stats import Z95, wilson
    from vectors.errors import SteerError

    try:
        device, dtype = _placement(args)
        cfg = EvalConfig(
            model=args.model,
            sae=args.sae,
            catalog=args.catalog,
            vectors=[v.strip() for v in args.vectors.split(",") if v.strip()],
            data=args.data,
            neutral=args.neutral,
            strengths=args.strengths,
            splits=[s.strip() for s in args.splits.split(",")] if args.splits else None,
            targets=parse_where(args.target),
            alpha=args.alpha,
            out=args.out,
            write_back=not args.no_write_back,
            device=device,
            dtype=dtype,
            progress=not args.no_progress,
        )
        report = evaluate_vectors(cfg)
    except (DataError, SteerError, ValueError, OSError) as exc:
        print(f"steer eval: error: {exc}", file=sys.stderr)
        return 2
    for name, entry in report.vectors.items():
        at = entry.record.headline(entry.default_strength)
        print(
            f"{name}: default_strength={entry.default_strength:g} strength_range={list(entry.strength_range)} "
            f"held-out acc={ {f'{s:g}': round(a, 4) for s, a in entry.record.heldout_accuracy.items()} } "
            f"retention at default={at.get(f'retention@{entry.default_strength:g}')}"
        )
    if report.retention_facts and wilson(0, report.retention_facts)[1] > cfg.retention_bound:
        print(
            f"steer eval: warning: {report.retention_facts} neutral facts cannot show a retention cost under "
            f"{100 * cfg.retention_bound:g} % with 95 % confidence; no strength but 0 can be the default "
            f"(give at least {math.ceil(Z95**2 / cfg.retention_bound)} facts)",
            file=sys.stderr,
        )
    print(f"report: {args.out}")
    return 0


def register_demo_report(demo_subparsers: Any) -> None:
    """`steer demo report`: add to the `demo` sub-command group (next to `demo build`)."""
    p = demo_subparsers.add_parser(
        "report",
        help="train CAA/SAS/BiPO/YaPO vectors on the built world, evaluate them, write report.{json,md}",
    )
    p.add_argument("--out", default="var/demo", help="the demo folder `steer demo build` wrote")
    p.add_argument("--countries", help="comma-separated (default: morocco, egypt and two more)")
    p.add_argument(
        "--steps",
        type=int,
        default=None,
        help="YaPO / BiPO optimiser steps per vector (default: DemoConfig.steps)",
    )
    p.add_argument(
        "--retain-weight",
        type=float,
        default=None,
        help="YaPO / BiPO retention penalty on half the neutral facts; 0 = the paper's objective "
        "(default: DemoConfig.retain_weight)",
    )
    p.add_argument(
        "--yapo-l1",
        type=float,
        default=None,
        help="YaPO's proximal L1 (default: DemoConfig.yapo_l1; 0: none)",
    )
    p.add_argument("--seed", type=int, default=11)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: DemoConfig.threads)")
    p.add_argument(
        "--workers",
        type=int,
        default=default_workers(),
        help="processes that train and evaluate side by side; the vectors do not depend on it "
        "(default: the CPU count, at most 4)",
    )
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(handler=_demo_report)


def default_workers() -> int:
    """Report processes for this machine: one per core (each runs one torch thread), at most 4."""
    return max(1, min(4, os.cpu_count() or 1))


def _demo_report(args: argparse.Namespace) -> int:
    from trainer.demo.report import DemoConfig, build_report

    cfg = DemoConfig(
        root=args.out,
        countries=[c.strip() for c in args.countries.split(",")] if args.countries else None,
        seed=args.seed,
        progress=not args.no_progress,
        workers=args.workers,
    )
    if args.steps is not None:
        cfg.steps = args.steps
    if args.retain_weight is not None:
        cfg.retain_weight = args.retain_weight
    if args.threads is not None:
        cfg.threads = args.threads
    if args.yapo_l1 is not None:
        cfg.yapo_l1 = args.yapo_l1
    report = build_report(cfg)
    print(json.dumps({"targets": report.targets.to_dict(), "seconds": report.seconds}, indent=1))
    print(f"report: {args.out}/report.md")
    return 0


def register_demo_compare(demo_subparsers: Any) -> None:
    """`steer demo compare`: the Table 7 analog with rates chosen on validation topics, over seeds."""
    p = demo_subparsers.add_parser(
        "compare",
        help="YaPO / BiPO / CAA / SAS on a built world: rates chosen on validation topics, 3 seeds, "
        "convergence and stability; writes compare.{json,md} (resumes from finished runs)",
    )
    p.add_argument("--world", default="var/wide", help="a world `steer demo build` wrote (default: var/wide)")
    p.add_argument("--out", default=None, help="output folder (default: WORLD/compare)")
    p.add_argument("--seeds", default="11,12,13", help="comma-separated training seeds (default: 11,12,13)")
    p.add_argument("--yapo-lrs", default="0.01,0.03", help="YaPO learning-rate candidates")
    p.add_argument("--bipo-lrs", default="0.1,0.3", help="BiPO learning-rate candidates")
    p.add_argument("--countries", type=int, default=4, help="how many countries (default: 4)")
    p.add_argument("--steps", type=int, default=300, help="YaPO / BiPO optimiser steps per vector")
    p.add_argument("--threads", type=int, default=2, help="torch threads per process (default: 2)")
    p.add_argument(
        "--workers",
        type=int,
        default=1,
        help="processes per report run (default: 1; with 2, use --threads 1)",
    )
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(handler=_demo_compare)


def _floats(text: str) -> tuple[float, ...]:
    return tuple(float(x) for x in text.split(",") if x.strip())


def _demo_compare(args: argparse.Namespace) -> int:
    from trainer.demo.compare import CompareConfig, run_compare

    cfg = CompareConfig(
        root=args.world,
        out=args.out,
        seeds=tuple(int(x) for x in args.seeds.split(",") if x.strip()),
        lrs={"yapo": _floats(args.yapo_lrs), "bipo": _floats(args.bipo_lrs)},
        n_countries=args.countries,
        steps=args.steps,
        threads=args.threads,
        workers=args.workers,
        progress=not args.no_progress,
    )
    result = run_compare(cfg)
    print(json.dumps(result["learning_rates"], indent=1))
    print(f"comparison: {cfg.folder}/compare.md")
    return 0


__all__ = ["register_demo_compare", "register_demo_report", "register_eval", "register_train"]
