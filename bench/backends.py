"""The server on both engines: `steer bench server --backend vllm` (issue 24).

Two `steer serve` child processes on the same model folder and catalog (`--shape`'s random world,
`bench.world.shape_folder`, default Gemma 3 270M's shape): one on the native engine (this Python), one on the vLLM
engine (`--backend vllm`, from the vLLM venv's Python: `make vllm-venv`), with the same slots, context and batch
limits. Both stay up; rounds alternate between them, so only one is ever busy. A case is one pass of streamed
`/v1/completions` requests, greedy with `ignore_eos`: 1 client sending `SERIAL_REQUESTS` prompts one after the
other, or `clients` clients at once; unsteered (the base model id) or steered (each request names its own YaPO
vector at strength 1 in a steered model id, `clients` distinct vectors). Reports tokens/s and time to first
token per case, vLLM / native and steered / unsteered paired per round, and how many greedy texts the two engines
agree on. Skipped with one line when vLLM is not importable from the vLLM venv's Python.
"""

from __future__ import annotations

import os
import sys
import tempfile
from dataclasses import asdict
from pathlib import Path
from typing import Any

from bench.config import BenchConfig
from bench.peer import (
    SERIAL_REQUESTS,
    VLLM_KV_GIB,
    VLLM_MEMORY_SHARE,
    Pass,
    case_records,
    child_server,
    free_port,
    ours_command,
    request_bodies,
    run_pass,
    tree_rss_bytes,
    vllm_missing,
)
from bench.server_load import SERVER_CONTEXT
from bench.timing import interleave, median, paired_ratio
from bench.world import client_vector, shape_folder

ENGINES = ("native", "vllm")
MODEL_ID = "bench-model"


def case_name(engine: str, clients: int, steered: bool) -> str:
    return f"{engine}_{clients}_{'steered' if steered else 'plain'}"


def case_bodies(prompts: list[str], tokens: int, steered: bool) -> list[dict[str, Any]]:
    """Greedy fixed-length streams; steered: request i names client i's vector at strength 1 in its model id."""
    bodies = request_bodies(MODEL_ID, prompts, tokens)
    if steered:
        for i, body in enumerate(bodies):
            body["model"] = f"{MODEL_ID}:{client_vector(i)}@1"
    return bodies


def ratios(passes: dict[str, list[Pass]], clients: int) -> dict[str, float]:
    """Paired per round: vLLM / native tokens/s (and time to first token at 1 client), steered / unsteered."""
    tok = {k: [p.tokens_per_s for p in v] for k, v in passes.items()}
    ttft = {k: [median(p.ttft) for p in v] for k, v in passes.items()}
    out: dict[str, float] = {}
    for n in (1, clients):
        for steered in (False, True):
            mode = "steered" if steered else "plain"
            out[f"vllm_vs_native_tok_s_{n}_{mode}"] = paired_ratio(
                tok[case_name("vllm", n, steered)], tok[case_name("native", n, steered)]
            )
        for engine in ENGINES:
            out[f"{engine}_steered_vs_plain_tok_s_{n}"] = paired_ratio(
                tok[case_name(engine, n, True)], tok[case_name(engine, n, False)]
            )
    for steered in (False, True):
        mode = "steered" if steered else "plain"
        out[f"vllm_vs_native_ttft_1_{mode}"] = paired_ratio(
            ttft[case_name("vllm", 1, steered)], ttft[case_name("native", 1, steered)]
        )
    return {k: round(v, 4) for k, v in out.items()}


def record(passes: dict[str, list[Pass]], clients: int) -> dict[str, Any]:
    """Per case tokens/s and TTFT percentiles; the ratios; greedy texts equal between the engines, per case."""
    cases = case_records(passes)
    same: dict[str, str] = {}
    for n in (1, clients):
        for steered in (False, True):
            native, vllm = passes[case_name("native", n, steered)], passes[case_name("vllm", n, steered)]
            pairs = [
                (a, b)
                for x, y in zip(native, vllm, strict=True)
                for a, b in zip(x.texts, y.texts, strict=True)
            ]
            same[f"{n}_{'steered' if steered else 'plain'}"] = f"{sum(a == b for a, b in pairs)}/{len(pairs)}"
    return {"cases": cases, "ratios": ratios(passes, clients), "identical_texts": same}


def run_backends(world: Any, cfg: BenchConfig) -> dict[str, Any]:
    """Start `steer serve` on both engines, alternate the passes, return the record (or a skip line)."""
    missing = vllm_missing(cfg.vllm_python)
    if missing:
        print(f"steer bench: server --backend vllm skipped: {missing}", file=sys.stderr, flush=True)
        return {"status": "skipped", "reason": missing}
    if not cfg.shape:
        raise ValueError(
            "`steer bench server --backend vllm` needs --shape: the model folder both servers load"
        )
    folder = shape_folder(cfg)
    slots, tokens = cfg.clients, cfg.server_new_tokens
    prompts = [f"In country {i % 10} at the festival number {i} people like" for i in range(slots)]
    # the servers choose their own threads, not the bench's one thread
    inherited = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    env = {
        **inherited,
        "HF_HUB_OFFLINE": "1",
        "STEER_MODEL_NAME": MODEL_ID,
        "STEER_MAX_CONFIGS_PER_BATCH": str(slots),
        "STEER_MAX_QUEUE": str(4 * slots),
    }
    vllm_env = {
        **env,
        "VLLM_CPU_OMP_THREADS_BIND": cfg.vllm_threads_bind,
        "VLLM_CPU_KVCACHE_SPACE": str(VLLM_KV_GIB),
        "STEER_VLLM_GPU_MEMORY_UTILIZATION": str(VLLM_MEMORY_SHARE),
    }
    ports = {engine: free_port() for engine in ENGINES}
    pythons = {"native": sys.executable, "vllm": cfg.vllm_python}
    timings: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="steer-backends-") as tmp:
        logs = Path(tmp)

        def server(engine: str) -> Any:
            command = ours_command(
                folder,
                ports[engine],
                slots,
                tokens,
                python=pythons[engine],
                backend=engine,
                device=cfg.device,
                dtype=cfg.dtype,
            )
            url = f"http://127.0.0.1:{ports[engine]}/ready"
            return child_server(
                command, vllm_env if engine == "vllm" else env, url, logs / f"{engine}.log", timings, engine
            )

        with server("native") as native, server("vllm") as vllm:
            cases = {
                case_name(engine, n, steered): (
                    lambda u=f"http://127.0.0.1:{ports[engine]}", n=n, steered=steered: run_pass(
                        u, case_bodies(prompts[: SERIAL_REQUESTS if n == 1 else slots], tokens, steered), n
                    )
                )
                for n in (1, slots)
                for steered in (False, True)
                for engine in ENGINES
            }
            passes = interleave(cases, cfg.repeats, cfg.warmup)
            rss = {"native": tree_rss_bytes(native.pid), "vllm": tree_rss_bytes(vllm.pid)}
    return {
        "status": "ok",
        "backends": list(ENGINES),
        "model_folder": str(folder),
        "clients": slots,
        "serial_requests": SERIAL_REQUESTS,
        "new_tokens": tokens,
        "context": SERVER_CONTEXT,
        "distinct_vectors": slots,
        "vllm_threads_bind": cfg.vllm_threads_bind,
        "ready_s": timings,
        "rss_gib": {k: round(v / 2**30, 2) for k, v in rss.items()},
        "rounds": {k: [asdict(p) for p in v] for k, v in passes.items()},
        **record(passes, slots),
    }
