"""The peer suite: our server against vLLM's OpenAI server on the same model and load (issue 25).

Both run as child processes on loopback over the `--shape` world's folder (`bench.world.shape_folder`, default
Gemma 3 270M's shape): ours is `steer serve` (compiled decode step, `SERVER_CONTEXT` positions per slot, the world's
SAE loaded, no steering in the requests), vLLM's is `python -m vllm.entrypoints.openai.api_server` from the vLLM
venv (`make vllm-venv`), float32, with the same batch and context limits and its CPU threads bound
(`VLLM_CPU_OMP_THREADS_BIND`). Both stay up; rounds alternate between them (interleaved, each round starting one
case later), so only one is ever busy. A case is one pass of streamed `/v1/completions` requests, greedy with
`ignore_eos` (exactly `server_new_tokens` tokens each): 1 client sending `SERIAL_REQUESTS` prompts one after the
other (time to first token, tokens/s), or `clients` clients at once (tokens/s). Ratios are ours / vLLM, paired per
round. When vLLM is not importable from the vLLM venv's Python the suite is skipped with a line saying so.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import httpx

from bench.config import BenchConfig
from bench.server_load import SERVER_CONTEXT
from bench.timing import interleave, median, paired_ratio, percentile, summary

VLLM_MEMORY_SHARE = 0.25
VLLM_KV_GIB = 2  # 32 rows × 512 positions of this model need ~0.6 GiB
SERIAL_REQUESTS = 4  # prompts the single client sends one after the other per round
READY_TIMEOUT_S = 1800.0  # a cold start compiles (ours: one graph; vLLM: its own) on a busy 2-core machine


@dataclass(frozen=True)
class Pass:
    """One case of one round: every request of one pass against one server, streamed."""

    clients: int
    seconds: float  # first send to last answer
    tokens: int  # completion tokens, from the streams' usage
    ttft: list[float]  # per request: send to the first chunk carrying text
    texts: list[str]

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.seconds if self.seconds > 0 else 0.0


def vllm_missing(python: str) -> str | None:
    """Why vLLM cannot be started from `python` (None: it can)."""
    if not Path(python).is_file():
        return f"no Python at {python} (build the vLLM venv with `make vllm-venv`, or pass --vllm-python)"
    probe = subprocess.run([python, "-c", "import vllm"], capture_output=True, text=True, timeout=600)
    if probe.returncode != 0:
        last = (probe.stderr.strip().splitlines() or ["no error output"])[-1]
        return f"`import vllm` fails in {python}: {last}"
    return None


def ours_command(
    folder: Path,
    port: int,
    slots: int,
    max_tokens: int,
    *,
    python: str = sys.executable,
    backend: str = "native",
    device: str = "cpu",
    dtype: str = "float32",
) -> list[str]:
    """`steer serve` (from `python`, on `backend`'s engine) on the world's folder: its SAE and vectors, `slots`
    rows of `SERVER_CONTEXT` positions."""
    return [
        python,
        "-m",
        "steer_cli",
        "serve",
        "--backend",
        backend,
        "--model",
        str(folder / "model"),
        "--sae",
        str(folder / "sae"),
        "--vectors",
        str(folder / "vectors"),
        "--device",
        device,
        "--dtype",
        dtype,
        "--max-batch",
        str(slots),
        "--max-context",
        str(SERVER_CONTEXT),
        "--max-new-tokens",
        str(max_tokens),
        "--port",
        str(port),
        "--log-level",
        "warning",
    ]


def vllm_command(python: str, folder: Path, port: int, slots: int, name: str) -> list[str]:
    """vLLM's OpenAI server on the same model folder, batch and context limits, float32."""
    return [
        python,
        "-m",
        "vllm.entrypoints.openai.api_server",
        "--model",
        str(folder / "model"),
        "--served-model-name",
        name,
        "--dtype",
        "float32",
        "--max-model-len",
        str(SERVER_CONTEXT),
        "--max-num-seqs",
        str(slots),
        # on the CPU backend this is the share of the machine's memory vLLM reserves (default 0.92: refused on a
        # machine where other processes hold memory); its KV cache is VLLM_CPU_KVCACHE_SPACE GiB
        "--gpu-memory-utilization",
        str(VLLM_MEMORY_SHARE),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def child_server(
    command: Sequence[str],
    env: dict[str, str],
    ready_url: str,
    log: Path,
    timings: dict[str, float],
    key: str,
) -> Iterator[subprocess.Popen[bytes]]:
    """Start `command` (its own process group, output to `log`), wait until `ready_url` answers 200; stop it
    (SIGTERM to it, then SIGKILL to its group) on leaving. `timings[key]` is the time to ready."""
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            list(command), env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        t0 = time.monotonic()
        while True:
            if proc.poll() is not None:
                lines = log.read_text(errors="replace").splitlines()
                errors = [line for line in lines if "Error" in line][:3]  # the root cause comes first
                tail = "\n".join(errors + lines[-10:])
                raise RuntimeError(f"{command[0]} … exited with {proc.returncode} before ready:\n{tail}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(ready_url, timeout=5).status_code == 200:
                    break
            if time.monotonic() - t0 > READY_TIMEOUT_S:
                raise TimeoutError(f"{ready_url} not ready after {READY_TIMEOUT_S:.0f} s (log: {log})")
            time.sleep(1.0)
        timings[key] = round(time.monotonic() - t0, 1)
        yield proc
    finally:
        # SIGTERM to the server alone, as an orchestrator stops it (the group's children, vLLM's engine core among
        # them, are the server's to stop: signalled directly they die first and the server logs a dead engine)
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(60)
        with contextlib.suppress(ProcessLookupError):  # whatever is left of the group
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(30)


def tree_rss_bytes(pid: int) -> int:
    """Resident memory of `pid` and every process below it (vLLM's engine runs in a child process)."""
    parents: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            parents[int(stat.parent.name)] = int(fields[1])
    family, grew = {pid}, True
    while grew:
        more = {p for p, parent in parents.items() if parent in family} - family
        family |= more
        grew = bool(more)
    total = 0
    for p in family:
        with contextlib.suppress(OSError, ValueError):
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
    return total


async def _stream(client: httpx.AsyncClient, body: dict[str, Any]) -> tuple[float, int, str]:
    """One streamed completion: (time to the first text chunk, completion tokens, text)."""
    t0 = time.perf_counter()
    ttft, tokens, parts = float("nan"), 0, []
    async with client.stream("POST", "/v1/completions", json=body) as r:
        if r.status_code != 200:
            raise RuntimeError(f"POST /v1/completions answered {r.status_code}: {(await r.aread())[:300]!r}")
        async for line in r.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            for choice in chunk.get("choices") or []:
                if choice.get("text"):
                    if not parts:
                        ttft = time.perf_counter() - t0
                    parts.append(choice["text"])
            if chunk.get("usage"):
                tokens = int(chunk["usage"]["completion_tokens"])
    return ttft, tokens, "".join(parts)


async def _pass(url: str, bodies: list[dict[str, Any]], clients: int) -> Pass:
    limits = httpx.Limits(max_connections=clients + 4, max_keepalive_connections=clients + 4)
    async with httpx.AsyncClient(base_url=url, timeout=900, limits=limits) as client:
        t0 = time.perf_counter()
        if clients == 1:
            done = [await _stream(client, b) for b in bodies]
        else:
            done = list(await asyncio.gather(*(_stream(client, b) for b in bodies)))
        seconds = time.perf_counter() - t0
    return Pass(clients, seconds, sum(d[1] for d in done), [d[0] for d in done], [d[2] for d in done])


def run_pass(url: str, bodies: list[dict[str, Any]], clients: int) -> Pass:
    return asyncio.run(_pass(url, bodies, clients))


def request_bodies(model: str, prompts: Sequence[str], tokens: int) -> list[dict[str, Any]]:
    """Greedy, exactly `tokens` new tokens (`ignore_eos`), streamed with the usage chunk at the end."""
    return [
        {
            "model": model,
            "prompt": p,
            "max_tokens": tokens,
            "temperature": 0.0,
            "ignore_eos": True,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        for p in prompts
    ]


def ratios(passes: dict[str, list[Pass]], clients: int) -> dict[str, float]:
    """Ours / vLLM, paired per round: tokens/s at 1 and `clients` clients, time to first token at 1 (p50)."""
    tok = {k: [p.tokens_per_s for p in v] for k, v in passes.items()}
    ttft = {k: [median(p.ttft) for p in v] for k, v in passes.items()}
    return {
        "tok_s_1": round(paired_ratio(tok["ours_1"], tok["vllm_1"]), 4),
        f"tok_s_{clients}": round(paired_ratio(tok[f"ours_{clients}"], tok[f"vllm_{clients}"]), 4),
        "ttft_1": round(paired_ratio(ttft["ours_1"], ttft["vllm_1"]), 4),
    }


def case_records(passes: dict[str, list[Pass]]) -> dict[str, dict[str, Any]]:
    """Per case: clients, tokens/s (summary over rounds), TTFT percentiles over every request, tokens per pass."""
    return {
        name: {
            "clients": runs[0].clients,
            "tokens_per_s": summary([p.tokens_per_s for p in runs], digits=2),
            "ttft_ms": {
                "p50": round(percentile([t * 1e3 for p in runs for t in p.ttft], 50), 1),
                "p99": round(percentile([t * 1e3 for p in runs for t in p.ttft], 99), 1),
            },
            "tokens_per_pass": runs[0].tokens,
        }
        for name, runs in passes.items()
    }


def record(passes: dict[str, list[Pass]], clients: int) -> dict[str, Any]:
    """What the JSON keeps of the passes: per case tokens/s, TTFT percentiles, and whether greedy texts agreed."""
    cases = case_records(passes)
    same = {
        n: sum(
            a == b
            for ours, theirs in zip(passes[f"ours_{n}"], passes[f"vllm_{n}"], strict=True)
            for a, b in zip(ours.texts, theirs.texts, strict=True)
        )
        for n in (1, clients)
    }
    total = {n: sum(len(p.texts) for p in passes[f"ours_{n}"]) for n in (1, clients)}
    return {
        "cases": cases,
        "ours_vs_vllm": ratios(passes, clients),
        "identical_texts": {str(n): f"{same[n]}/{total[n]}" for n in (1, clients)},
    }


def run_peer(world: Any, cfg: BenchConfig) -> dict[str, Any]:
    """Start both servers, alternate the passes, return the record (or a skip when vLLM is missing)."""
    from bench.world import shape_folder

    python = cfg.vllm_python
    missing = vllm_missing(python)
    if missing:
        print(f"steer bench: peer suite skipped: {missing}", file=sys.stderr, flush=True)
        return {"status": "skipped", "reason": missing}
    if not cfg.shape:
        raise ValueError("the peer suite needs --shape: the model folder both servers load")
    folder = shape_folder(cfg)
    slots, tokens, name = cfg.clients, cfg.server_new_tokens, "peer-model"
    prompts = [f"In country {i % 10} at the festival number {i} people like" for i in range(slots)]
    # the servers choose their own threads (ours: its CPUs; vLLM: the bound cores), not the bench's one thread
    inherited = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    env = {**inherited, "HF_HUB_OFFLINE": "1", "STEER_MAX_CONFIGS_PER_BATCH": str(slots)}
    env["STEER_MODEL_NAME"] = name
    env["STEER_MAX_QUEUE"] = str(4 * slots)
    # plain vLLM: a plugin name no entry point has, so none loads (the venv also holds our steering plugin)
    vllm_env = {**env, "VLLM_CPU_OMP_THREADS_BIND": cfg.vllm_threads_bind, "VLLM_PLUGINS": "no-plugin"}
    vllm_env["VLLM_CPU_KVCACHE_SPACE"] = str(VLLM_KV_GIB)
    ours_port, vllm_port = free_port(), free_port()
    timings: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="steer-peer-") as tmp:
        logs = Path(tmp)
        with (
            child_server(
                ours_command(folder, ours_port, slots, tokens),
                env,
                f"http://127.0.0.1:{ours_port}/ready",
                logs / "ours.log",
                timings,
                "ours_ready_s",
            ) as ours,
            child_server(
                vllm_command(python, folder, vllm_port, slots, name),
                vllm_env,
                f"http://127.0.0.1:{vllm_port}/health",
                logs / "vllm.log",
                timings,
                "vllm_ready_s",
            ) as theirs,
        ):
            urls = {"ours": f"http://127.0.0.1:{ours_port}", "vllm": f"http://127.0.0.1:{vllm_port}"}
            serial = request_bodies(name, prompts[:SERIAL_REQUESTS], tokens)
            burst = request_bodies(name, prompts, tokens)
            cases = {
                f"{server}_{n}": (lambda u=url, b=(serial if n == 1 else burst), n=n: run_pass(u, b, n))
                for n in (1, slots)
                for server, url in urls.items()
            }
            passes = interleave(cases, cfg.repeats, cfg.warmup)
            rss = {"ours": tree_rss_bytes(ours.pid), "vllm": tree_rss_bytes(theirs.pid)}
    return {
        "status": "ok",
        "model_folder": str(folder),
        "clients": slots,
        "serial_requests": SERIAL_REQUESTS,
        "new_tokens": tokens,
        "context": SERVER_CONTEXT,
        "vllm_threads_bind": vllm_env["VLLM_CPU_OMP_THREADS_BIND"],
        "ready_s": timings,
        "rss_gib": {k: round(v / 2**30, 2) for k, v in rss.items()},
        "rounds": {k: [asdict(p) for p in v] for k, v in passes.items()},
        **record(passes, slots),
    }
