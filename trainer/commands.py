"""`steer` sub-commands of the trainer package: `demo build` (culture world), `train`, `eval`.

`register` is what `steer_cli` calls; each sub-command is registered by its own function so the
world build and the trainer can evolve independently.
"""

from __future__ import annotations

from typing import Any


def register(subparsers: Any) -> None:
    _register_demo(subparsers)
    _register_train(subparsers)
    _register_eval(subparsers)


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
        choices=("default", "small", "wide"),
        default="default",
        help="world size: default (the demo), small (tests, seconds), wide (d_model 256, 16x SAE; ~16 min)",
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
    from trainer.cli import register_demo_compare, register_demo_report

    register_demo_report(actions)  # vectors + report.{json,md}
    register_demo_compare(actions)  # the Table 7 analog over seeds: compare.{json,md}


def _demo_build(args: Any) -> int:
    import json
    from dataclasses import replace

    from trainer.world import WorldConfig, build_world

    preset = "small" if args.small else args.preset
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
    from trainer.cli import default_workers
    from trainer.report import DemoConfig, build_report

    workers = args.workers if args.workers is not None else default_workers()
    report = build_report(DemoConfig(root=args.out, threads=config.threads, workers=workers))
    print(json.dumps({"targets": report["targets"], "seconds": report["seconds"]}, indent=1))
    print(f"vectors in {args.out}/vectors, report in {args.out}/report.md")
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


def _register_train(subparsers: Any) -> None:
    from trainer.cli import register_train

    register_train(subparsers)


def _register_eval(subparsers: Any) -> None:
    from trainer.cli import register_eval

    register_eval(subparsers)
