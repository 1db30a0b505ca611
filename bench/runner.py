"""`run_bench`: build the world once, run the suites in one process, write the JSON, return the result."""

from __future__ import annotations

import sys
import time
import traceback
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from bench.config import ON_REQUEST, SUITES, BenchConfig
from bench.report import SCHEMA, loadavg, machine_info, summarize, versions, write_json
from bench.world import BenchWorld, load_world


class BenchError(RuntimeError):
    """The benchmark cannot run as asked (the message says why and what to do)."""


def check_device(cfg: BenchConfig) -> torch.device:
    """The device to run on; a clear error when CUDA is asked for and absent."""
    device = torch.device(cfg.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        build = torch.version.cuda or "none (CPU-only build)"
        raise BenchError(
            f"{'--gpu' if cfg.mode == 'gpu' else f'--device {cfg.device}'} needs a CUDA GPU, but "
            f"torch.cuda.is_available() is False (torch {torch.__version__}, CUDA build: {build}). "
            "Run it on a GPU host (bench/gpu.sh), or use `steer bench --quick` on CPU."
        )
    return device


def _suites(cfg: BenchConfig) -> dict[str, Callable[[Any, BenchConfig], dict[str, Any]]]:
    """Each suite's function; it gets the loaded world (None for the suites whose servers load their own)."""
    from bench.backends import run_backends
    from bench.decode import run_decode
    from bench.engine_decode import run_engine
    from bench.hf_generate import run_hf
    from bench.join import run_join
    from bench.peer import run_peer
    from bench.server_load import run_server
    from bench.train_speed import run_train

    return {
        "decode": run_decode,
        "engine": run_engine,
        "server": run_backends if cfg.backend == "vllm" else run_server,
        "join": run_join,
        "train": run_train,
        "hf": run_hf,
        "peer": run_peer,
    }


def default_out(now: datetime | None = None) -> Path:
    stamp = (now or datetime.now(timezone.utc)).strftime("%Y%m%dT%H%M%SZ")
    return Path("var") / "bench" / f"{stamp}.json"


def run_bench(
    cfg: BenchConfig, out: Path | None = None, *, log: Callable[[str], None] | None = None
) -> dict[str, Any]:
    """Run `cfg.suites`; a failing suite is recorded (`{"status": "failed", ...}`) and the others still run."""
    say = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    cfg.validate()
    device = check_device(cfg)
    threads_before = torch.get_num_threads()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    try:
        result = _run(cfg, device, say)
    finally:
        torch.set_num_threads(threads_before)
    if out is not None:
        result["out"] = str(out)
        write_json(result, out)
    return result


def _run(cfg: BenchConfig, device: torch.device, say: Callable[[str], None]) -> dict[str, Any]:
    t0 = time.perf_counter()
    # child servers (the peer suite, the server suite on both backends) load the shape's folder themselves; the
    # other suites run on a world loaded here
    world: BenchWorld | None = None
    own_world = set(ON_REQUEST) | ({"server"} if cfg.backend == "vllm" else set())
    if any(name not in own_world for name in cfg.suites):
        say(f"steer bench: building the world ({cfg.mode})")
        world = load_world(cfg)
    result: dict[str, Any] = {
        "schema": SCHEMA,
        "mode": cfg.mode,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": machine_info(device),
        "versions": versions(),
        "config": cfg.to_dict(),
        "world": world.shapes() if world else {"source": f"the {cfg.shape} folder, loaded by the servers"},
        "suite_seconds": {},
    }
    runners = _suites(cfg)
    for name in cfg.suites:
        say(f"steer bench: {name}")
        s0 = time.perf_counter()
        try:
            result[name] = runners[name](world, cfg)
        except Exception as exc:
            say(f"steer bench: {name} failed: {type(exc).__name__}: {exc}")
            result[name] = {
                "status": "failed",
                "error": f"{type(exc).__name__}: {exc}",
                "traceback": traceback.format_exc(limit=8),
            }
        result["suite_seconds"][name] = round(time.perf_counter() - s0, 2)
    result["machine"]["load_average_end"] = loadavg()
    result["seconds"] = round(time.perf_counter() - t0, 2)
    result["summary"] = summarize(result)
    return result


def failed_suites(result: dict[str, Any]) -> list[str]:
    return [k for k in SUITES if isinstance(result.get(k), dict) and result[k].get("status") == "failed"]
