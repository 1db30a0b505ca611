"""The server end to end: N concurrent HTTP clients (httpx, loopback, real uvicorn), each with its own vector.

Two servers share the benchmark's model (only one is ever busy): one batches up to N rows with up to N distinct
steering configs, the other has `max_batch=1` and so serves the same concurrent requests one at a time. Rounds
alternate (batched steered, batched unsteered, serial steered, …). Every request is greedy with EOS disabled,
so each produces exactly `server_new_tokens` tokens.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from bench.config import BenchConfig
from bench.timing import interleave, median, now, paired_ratio, percentile, summary
from bench.world import BenchWorld, distinct_vectors

SERVER_CONTEXT = 512  # positions per slot (a real model's own context would not fit 32 slots in memory)


@dataclass(frozen=True)
class Round:
    """One round: every client sent one request; wall time from the first send to the last answer."""

    seconds: float
    latencies: list[float]
    tokens: int
    requests: int


@contextlib.contextmanager
def serve(
    world: BenchWorld,
    engine: Any,
    catalog: Path,
    cfg: BenchConfig,
    *,
    max_batch: int,
    configs: int,
    timings: dict[str, float],
) -> Iterator[str]:
    """The real app (`server.app.create_app`) under uvicorn in a thread on a free loopback port; yields its URL.

    Both servers of a run share one engine (its slots and hooks): only one is ever busy. The decode step is the
    served one (`engine=auto`: compiled and verified per bucket); `timings["ready_s"]` is the time to ready.
    """
    import uvicorn

    from bench.engine_decode import served_buckets
    from server.app import create_app
    from server.settings import ServerSettings

    settings = ServerSettings(
        model=world.model_name,
        vectors=str(catalog),
        device=str(world.device),
        api_key=None,
        max_batch=max_batch,
        max_configs_per_batch=configs,
        max_queue=max(64, 4 * configs),
        max_new_tokens=max(cfg.server_new_tokens, 16),
        default_max_new_tokens=cfg.server_new_tokens,
        engine="auto",
        compile_backend=cfg.compile_backend,
        compile_buckets=served_buckets(engine.runner.slots),
        catalog_poll_s=3600.0,
        warmup=True,
        warmup_tokens=2,
    )
    app = create_app(settings, engine=engine)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    server = uvicorn.Server(
        uvicorn.Config(app, log_level="error", lifespan="on", timeout_graceful_shutdown=2)
    )
    thread = threading.Thread(
        target=server.run, kwargs={"sockets": [sock]}, daemon=True, name="bench-uvicorn"
    )
    t0 = time.monotonic()
    thread.start()
    try:
        _wait_ready(url, server)
        timings.setdefault("ready_s", time.monotonic() - t0)
        yield url
    finally:
        server.should_exit = True
        thread.join(30)
        sock.close()


def bench_engine(world: BenchWorld, slots: int) -> Any:
    """The served engine over the benchmark's model; EOS disabled so every request costs the same."""
    from server.engine.model import LoadedModel

    coders = {s.coder.layer: s.coder for s in world.saes[:1]}
    engine = LoadedModel(
        world.model,
        world.tokenizer,
        coders,
        name=world.model_name,
        max_batch=slots,
        max_context=SERVER_CONTEXT,
    )
    engine.eos_ids = frozenset()
    return engine


def _wait_ready(url: str, server: Any, timeout: float = 300.0) -> None:
    deadline = time.monotonic() + timeout
    last = "no answer"
    while time.monotonic() < deadline:
        if server.started:
            with contextlib.suppress(httpx.HTTPError):
                r = httpx.get(f"{url}/ready", timeout=5)
                if r.status_code == 200:
                    return
                last = r.text
                if r.json().get("status") == "failed":
                    raise RuntimeError(f"benchmark server failed to start: {last}")
        time.sleep(0.05)
    raise TimeoutError(f"benchmark server not ready after {timeout:.0f} s: {last}")


async def _round_async(url: str, bodies: list[dict[str, Any]]) -> Round:
    limits = httpx.Limits(max_connections=len(bodies) + 4, max_keepalive_connections=len(bodies) + 4)
    async with httpx.AsyncClient(base_url=url, timeout=600, limits=limits) as client:

        async def one(body: dict[str, Any]) -> tuple[float, int]:
            t0 = now()
            r = await client.post("/generate", json=body)
            if r.status_code != 200:
                raise RuntimeError(f"POST /generate answered {r.status_code}: {r.text[:300]}")
            return now() - t0, int(r.json()["usage"]["completion_tokens"])

        t0 = now()
        done = await asyncio.gather(*(one(b) for b in bodies))
        seconds = now() - t0
    return Round(seconds, [d[0] for d in done], sum(d[1] for d in done), len(bodies))


def run_round(url: str, bodies: list[dict[str, Any]]) -> Round:
    return asyncio.run(_round_async(url, bodies))


def _stats(rounds: list[Round]) -> dict[str, Any]:
    lat = [x * 1e3 for r in rounds for x in r.latencies]
    return {
        "requests_per_s": summary([r.requests / r.seconds for r in rounds], digits=3),
        "tokens_per_s": summary([r.tokens / r.seconds for r in rounds], digits=2),
        "round_s": summary([r.seconds for r in rounds]),
        "latency_ms": {
            "p50": round(percentile(lat, 50), 2),
            "p99": round(percentile(lat, 99), 2),
            "max": round(max(lat), 2) if lat else None,
        },
        "tokens_per_round": rounds[0].tokens if rounds else 0,
    }


def run_server(world: BenchWorld, cfg: BenchConfig) -> dict[str, Any]:
    """Batched vs serial (same concurrent requests, distinct vectors) and batched steered vs unsteered."""
    from vectors.io import save_vector
    from vectors.names import vector_path

    n, tokens = cfg.clients, cfg.server_new_tokens
    vecs = distinct_vectors(world.saes[0], world.model_ref(), n, cfg.ks, seed=cfg.seed + 29, prefix="bench/c")
    prompts = [f"In country {i % 10} at the festival people like" for i in range(n)]
    steered = [
        {"prompt": p, "steer": {v.name: 1.0}, "max_new_tokens": tokens, "temperature": 0.0}
        for p, v in zip(prompts, vecs, strict=True)
    ]
    plain = [{"prompt": p, "max_new_tokens": tokens, "temperature": 0.0} for p in prompts]
    with tempfile.TemporaryDirectory(prefix="steer-bench-") as tmp:
        catalog = Path(tmp) / "vectors"
        for v in vecs:
            save_vector(v, vector_path(catalog, v.name))
        engine = bench_engine(world, slots=n)
        timings: dict[str, float] = {}
        with (
            serve(world, engine, catalog, cfg, max_batch=n, configs=n, timings=timings) as batched_url,
            serve(world, engine, catalog, cfg, max_batch=1, configs=1, timings=timings) as serial_url,
        ):
            rounds = interleave(
                {
                    "batched": lambda: run_round(batched_url, steered),
                    "batched_unsteered": lambda: run_round(batched_url, plain),
                    "serial": lambda: run_round(serial_url, steered),
                },
                cfg.repeats,
                cfg.warmup,
            )
        engine.close()
    tok_s = {k: [r.tokens / r.seconds for r in v] for k, v in rounds.items()}
    return {
        "clients": n,
        "new_tokens": tokens,
        "distinct_vectors": len({v.fingerprint for v in vecs}),
        "modes": {
            "batched": {"max_batch": n, **_stats(rounds["batched"])},
            "batched_unsteered": {"max_batch": n, **_stats(rounds["batched_unsteered"])},
            "serial": {"max_batch": 1, **_stats(rounds["serial"])},
        },
        "batched_vs_serial": round(paired_ratio(tok_s["batched"], tok_s["serial"]), 4),
        "steered_vs_unsteered": round(paired_ratio(tok_s["batched"], tok_s["batched_unsteered"]), 4),
        "batched_tokens_per_s_median": round(median(tok_s["batched"]), 2),
        "ready_s": round(timings["ready_s"], 2),
    }
