"""`steer bench`: the benchmark command (CPU `--quick`, CUDA `--gpu`); see docs/BENCHMARKS.md."""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

from bench.config import SUITES, BenchConfig


def register(subparsers: Any) -> None:
    """Add `steer bench` to the `steer` command."""
    parser = subparsers.add_parser(
        "bench",
        help="measure steering overhead, server batching and trainer speed",
        description="Benchmarks (not tests): decode with/without steering (dense, exact fast path, reference "
        "SAE round trip) at several batch sizes, a batch of distinct configs, the HTTP server batched vs one at a "
        "time, and YaPO training fast vs reference. Interleaved, median of repeats, in one process. Prints a "
        "table whose last line is one JSON object, and writes the full result as JSON.",
    )
    parser.add_argument(
        "suite",
        nargs="?",
        default="all",
        choices=["all", *SUITES],
        help="run one suite only (default: all but peer, which runs only when named)",
    )
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="CPU, culture-world shapes, ~3 minutes (default)")
    mode.add_argument(
        "--gpu",
        action="store_true",
        help="CUDA: random-weight Gemma-2-2B config, bf16, random JumpReLU SAEs of width 16k and 65k",
    )
    mode.add_argument("--smoke", action="store_true", help=argparse.SUPPRESS)  # tiny run for tests
    parser.add_argument("--out", type=Path, help="JSON result path (default var/bench/<UTC timestamp>.json)")
    parser.add_argument("--repeats", type=int, help="timed rounds per case (default 5; keep ≥ 5 for records)")
    parser.add_argument("--world", help="built culture world to use (default var/demo, if it exists)")
    parser.add_argument(
        "--random-world", action="store_true", help="ignore any built world: random weights of its shape"
    )
    parser.add_argument(
        "--shape",
        choices=["gemma3-270m"],
        help="with --quick (or server --backend vllm): a real model's shape with random weights (written once under var/bench/)",
    )
    parser.add_argument(
        "--threads", type=int, help="torch threads (default: 1 on CPU, torch's default on GPU)"
    )
    parser.add_argument("--seed", type=int, help="seed of the random model, SAE, vectors and prompts")
    parser.add_argument(
        "--vllm-python",
        help="peer suite: the Python of a venv with vLLM (default var/vllm-venv/bin/python, `make vllm-venv`)",
    )
    parser.add_argument(
        "--backend",
        choices=["native", "vllm"],
        help="server suite: native alone (default), or vllm: `steer serve` on the native and the vLLM engine side "
        "by side (child processes on --shape's folder, default gemma3-270m; the vLLM venv's Python)",
    )
    parser.add_argument(
        "--vllm-threads-bind",
        help="peer suite: VLLM_CPU_OMP_THREADS_BIND for vLLM's server (default 0-1)",
    )
    parser.set_defaults(handler=bench)


def config_from_args(args: argparse.Namespace) -> BenchConfig:
    if args.gpu:
        cfg = BenchConfig.gpu()
    elif args.smoke:
        cfg = BenchConfig.smoke()
    elif args.shape or args.suite == "peer" or args.backend == "vllm":  # child servers need a model folder
        cfg = BenchConfig.real_shape(args.shape or "gemma3-270m")
    else:
        cfg = BenchConfig.quick()
    changes: dict[str, Any] = {}
    if args.suite != "all":
        changes["suites"] = (args.suite,)
    if args.repeats is not None:
        changes["repeats"] = args.repeats
    if args.world is not None:
        changes["world"] = args.world
    if args.random_world:
        changes["world"] = None
    if args.threads is not None:
        changes["threads"] = args.threads
    if args.seed is not None:
        changes["seed"] = args.seed
    if args.vllm_python is not None:
        changes["vllm_python"] = args.vllm_python
    if args.backend is not None:
        changes["backend"] = args.backend
    if args.backend == "vllm" and cfg.shape is None:  # --gpu: the servers load the shape's folder on CUDA
        changes["shape"] = args.shape or "gemma3-270m"
    if args.vllm_threads_bind is not None:
        changes["vllm_threads_bind"] = args.vllm_threads_bind
    return replace(cfg, **changes)


def bench(args: argparse.Namespace) -> int:
    from bench.report import summary_lines
    from bench.runner import BenchError, default_out, failed_suites, run_bench
    from bench.world import WorldError

    try:
        cfg = config_from_args(args)
        cfg.validate()
    except ValueError as exc:
        print(f"steer bench: {exc}", file=sys.stderr)
        return 2
    if cfg.repeats < 5 and cfg.mode != "smoke":
        print(f"steer bench: note: --repeats {cfg.repeats} < 5 is not a table of record", file=sys.stderr)
    out = args.out or default_out()
    try:
        result = run_bench(cfg, out)
    except (BenchError, WorldError) as exc:
        print(f"steer bench: {exc}", file=sys.stderr)
        return 2
    print("\n".join(summary_lines(result)), flush=True)
    print(f"steer bench: wrote {out}", file=sys.stderr)
    failed = failed_suites(result)
    if failed:
        print(f"steer bench: failed suite(s): {', '.join(failed)} (details in the JSON)", file=sys.stderr)
        return 1
    return 0
