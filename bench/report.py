"""Machine description, the headline ratios, the printed summary table and the JSON file."""

from __future__ import annotations

import importlib.metadata
import json
import math
import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch

from vectors.device import cpu_name

SCHEMA = "sparse-steer-bench/1"
# Keys the summary line always carries (None when the suite did not run); see docs/BENCHMARKS.md.
SUMMARY_KEYS = (
    "overhead_b1",
    "overhead_b32_mixed",
    "eager_overhead_b1",
    "eager_overhead_b32_mixed",
    "compiled_vs_eager_b1",
    "compiled_vs_eager_b8",
    "forward_overhead_b1",
    "reference_overhead_b1",
    "batched_vs_serial",
    "server_steered_vs_unsteered",
    "join_cost_ratio",
    "server_ready_s",
    "engine_vs_hf_b1",
    "engine_vs_hf_batch",
)
# Added to the summary when the peer suite ran (it runs only when named): ours / vLLM.
PEER_KEYS = ("ours_vs_vllm_tok_s_1", "ours_vs_vllm_tok_s_batch", "ours_vs_vllm_ttft_1")
# Added when the server suite compared the engines (`steer bench server --backend vllm`), unsteered and steered.
BACKEND_KEYS = (
    "vllm_vs_native_tok_s_1",
    "vllm_vs_native_tok_s_batch",
    "vllm_vs_native_tok_s_batch_steered",
    "native_steered_vs_plain_batch",
    "vllm_steered_vs_plain_batch",
)
_PACKAGES = ("torch", "transformers", "tokenizers", "sae-lens", "fastapi", "uvicorn", "httpx", "pydantic")


def machine_info(device: torch.device) -> dict[str, Any]:
    """Where the numbers come from (no paths, no host names)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count() or 0
    info: dict[str, Any] = {
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "cpu": cpu_name(),
        "cpu_cores_usable": cores,
        "torch_threads": torch.get_num_threads(),
        "load_average_start": loadavg(),
        "device": str(device),
        "device_name": cpu_name() if device.type == "cpu" else torch.cuda.get_device_name(device),
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info["gpu_memory_gib"] = round(props.total_memory / 2**30, 1)
        info["cuda"] = torch.version.cuda
    return info


def loadavg() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for name in _PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    out["sparse-steer"] = _git_commit()
    return out


def _git_commit() -> str | None:
    """The source commit (with `+dirty` when the working tree differs), or None outside a checkout."""
    root = Path(__file__).resolve().parent.parent
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short=12", "HEAD"], cwd=root, capture_output=True, text=True, timeout=5
        )
        if head.returncode != 0:
            return None
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=root,
            capture_output=True,
            text=True,
            timeout=5,
        )
        return head.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return None


# --- the headline ---------------------------------------------------------------------------------------


def _worst(rows: list[dict[str, Any]], batch: int, variant: str) -> float | None:
    vals = [r["overhead"] for r in rows if r["batch"] == batch and r["variant"] == variant]
    return max(vals) if vals else None


def summarize(result: dict[str, Any]) -> dict[str, Any]:
    """The one-line summary: ratios only (steered / unsteered time, batched / serial throughput, …).

    Fast and reference overheads are the worst case over the vectors measured (k and SAE width), per decode token.
    """
    out: dict[str, Any] = dict.fromkeys(SUMMARY_KEYS)
    out["mode"] = result.get("mode")
    out["device"] = result.get("machine", {}).get("device_name")
    decode = result.get("decode")
    if isinstance(decode, dict) and "cases" in decode:
        rows = decode["cases"]
        for b in sorted({r["batch"] for r in rows}):
            out[f"forward_overhead_b{b}"] = _worst(rows, b, "fast")
            out[f"reference_overhead_b{b}"] = _worst(rows, b, "reference")
            out[f"dense_overhead_b{b}"] = _worst(rows, b, "dense")
            out[f"hooks_overhead_b{b}"] = _worst(rows, b, "hooks-only")
        mixed = {r["variant"]: r for r in decode["mixed"]}
        out["mixed_batch"] = mixed["none"]["batch"]
        out["forward_overhead_b32_mixed"] = mixed["fast"]["overhead"]
        out["reference_overhead_b32_mixed"] = mixed["reference"]["overhead"]
        none_b1 = [r for r in rows if r["batch"] == 1 and r["variant"] == "none"]
        if none_b1:
            out["decode_tok_s_b1"] = none_b1[0]["decode_tok_s"]["median"]
    engine = result.get("engine")
    if isinstance(engine, dict) and "overhead_b1" in engine:
        for key in ("overhead_b1", "overhead_b32_mixed", "compiled_vs_eager_b1", "compiled_vs_eager_b8"):
            out[key] = engine[key]
        out["eager_overhead_b1"] = engine["eager_overhead_b1"]
        out["eager_overhead_b32_mixed"] = engine[f"eager_overhead_b{engine['mixed_batch']}_mixed"]
        out["engine_mode"] = engine["engine"]["mode"]
        out["compile_s"] = engine["compile_s"]
    server = result.get("server")
    if isinstance(server, dict) and "batched_vs_serial" in server:
        out["batched_vs_serial"] = server["batched_vs_serial"]
        out["server_steered_vs_unsteered"] = server["steered_vs_unsteered"]
        out["server_ready_s"] = server["ready_s"]
    if isinstance(server, dict) and "backends" in server and "ratios" in server:
        r, n = server["ratios"], server["clients"]
        picked = (
            r["vllm_vs_native_tok_s_1_plain"],
            r[f"vllm_vs_native_tok_s_{n}_plain"],
            r[f"vllm_vs_native_tok_s_{n}_steered"],
            r[f"native_steered_vs_plain_tok_s_{n}"],
            r[f"vllm_steered_vs_plain_tok_s_{n}"],
        )
        out.update(zip(BACKEND_KEYS, picked, strict=True))
    join = result.get("join")
    if isinstance(join, dict) and "join_cost_ratio" in join:
        out["join_cost_ratio"] = join["join_cost_ratio"]
    hf = result.get("hf")
    if isinstance(hf, dict) and "clients" in hf:
        out["engine_vs_hf_b1"] = hf["engine_vs_hf_b1"]
        out["engine_vs_hf_batch"] = hf[f"engine_vs_hf_b{hf['clients']}"]
    peer = result.get("peer")
    if isinstance(peer, dict) and "ours_vs_vllm" in peer:
        ratios = peer["ours_vs_vllm"]
        picked = (ratios["tok_s_1"], ratios[f"tok_s_{peer['clients']}"], ratios["ttft_1"])
        out.update(zip(PEER_KEYS, picked, strict=True))
    train = result.get("train")
    if isinstance(train, dict):
        out["train_fast_vs_reference"] = train.get("fast_vs_reference", train.get("status"))
    return out


# --- printing -------------------------------------------------------------------------------------------


def _fmt(x: Any, digits: int = 2) -> str:
    if x is None:
        return "-"
    if isinstance(x, float):
        return "nan" if math.isnan(x) else f"{x:.{digits}f}"
    return str(x)


def _table(header: list[str], rows: list[list[Any]]) -> list[str]:
    cells = [header] + [[_fmt(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in cells]
    return [lines[0], "  ".join("-" * w for w in widths), *lines[1:]]


def _decode_rows(rows: list[dict[str, Any]]) -> list[list[Any]]:
    return [
        [
            r["batch"],
            r["case"],
            r.get("nnz"),
            r.get("negative"),
            r["decode_tok_s"]["median"],
            r["ms_per_step"]["median"],
            r["ttft_ms"]["median"],
            r["overhead"],
            r["ttft_overhead"],
        ]
        for r in rows
    ]


def summary_lines(result: dict[str, Any]) -> list[str]:
    """The human table (every number is a median; ratios are paired per round)."""
    m = result["machine"]
    world = result["world"]
    lines = [
        f"steer bench ({result['mode']}) on {m['device_name']} [{m['device']}], torch threads {m['torch_threads']}, "
        f"load {m.get('load_average_start')} → {m.get('load_average_end')}, {result['seconds']:.0f} s",
        f"world: {world['source']}"
        + (
            f"; model {world['model']['architecture']} d_model={world['model']['hidden_size']} "
            f"layers={world['model']['num_layers']}; SAE(s) {', '.join(str(s['d_sae']) for s in world['saes'])} "
            f"at layer {world['layer']}"
            if "model" in world
            else ""
        ),
    ]
    decode = result.get("decode")
    head = ["batch", "case", "nnz", "neg", "tok/s", "ms/step", "ttft ms", "overhead", "ttft×"]
    if isinstance(decode, dict) and "cases" in decode:
        lines += [
            "",
            f"decode: prompt {decode['prompt_len']}, {decode['new_tokens']} new tokens, median of "
            f"{decode['repeats']} interleaved rounds; overhead = steered / unsteered time per decode token",
            *_table(head, _decode_rows(decode["cases"])),
            "",
            "mixed batch: every row a different steering config",
            *_table(head, _decode_rows(decode["mixed"])),
        ]
    elif decode is not None:
        lines += ["", f"decode: {decode}"]
    engine = result.get("engine")
    if isinstance(engine, dict) and "tok_s" in engine:
        rows = [[case, v["median"]] for case, v in engine["tok_s"].items()]
        lines += [
            "",
            f"engine: the served decode step ({engine['engine']['mode']}; compile + self-check "
            f"{engine['compile_s']} s), {engine['new_tokens']} steps after a {engine['prompt_len']}-token prompt",
            *_table(["case", "tok/s"], rows),
        ]
    elif engine is not None:
        lines += ["", f"engine: {engine}"]
    server = result.get("server")
    if isinstance(server, dict) and "modes" in server:
        rows = [
            [
                name,
                mode["max_batch"],
                mode["requests_per_s"]["median"],
                mode["tokens_per_s"]["median"],
                mode["latency_ms"]["p50"],
                mode["latency_ms"]["p99"],
            ]
            for name, mode in server["modes"].items()
        ]
        lines += [
            "",
            f"server: {server['clients']} concurrent clients, {server['distinct_vectors']} distinct vectors, "
            f"{server['new_tokens']} tokens each",
            *_table(["mode", "max_batch", "req/s", "tok/s", "p50 ms", "p99 ms"], rows),
        ]
    elif isinstance(server, dict) and "backends" in server:
        rows = [
            [case, v["clients"], v["tokens_per_s"]["median"], v["ttft_ms"]["p50"], v["ttft_ms"]["p99"]]
            for case, v in server["cases"].items()
        ]
        lines += [
            "",
            f"server on both engines: {server['clients']} distinct vectors, {server['new_tokens']} greedy tokens per "
            f"request (ignore_eos), ready in {server['ready_s']}, RSS GiB {server['rss_gib']}, identical texts "
            f"{server['identical_texts']}",
            *_table(["case", "clients", "tok/s", "ttft p50 ms", "ttft p99 ms"], rows),
            f"paired per round: {server['ratios']}",
        ]
    elif server is not None:
        lines += ["", f"server: {server}"]
    hf = result.get("hf")
    if isinstance(hf, dict) and "tok_s" in hf:
        rows = [[case, v["median"]] for case, v in hf["tok_s"].items()]
        lines += [
            "",
            f"hf: HF generate + a forward hook vs the engine (steered alike), {hf['new_tokens']} tokens after a "
            f"{hf['prompt_len']}-token prompt",
            *_table(["case", "tok/s"], rows),
        ]
    elif hf is not None:
        lines += ["", f"hf: {hf}"]
    peer = result.get("peer")
    if isinstance(peer, dict) and "cases" in peer:
        rows = [
            [case, v["clients"], v["tokens_per_s"]["median"], v["ttft_ms"]["p50"], v["ttft_ms"]["p99"]]
            for case, v in peer["cases"].items()
        ]
        lines += [
            "",
            f"peer: ours vs vLLM's OpenAI server, {peer['new_tokens']} greedy tokens per request (ignore_eos), "
            f"ready in {peer['ready_s']}, RSS GiB {peer['rss_gib']}, identical texts {peer['identical_texts']}",
            *_table(["case", "clients", "tok/s", "ttft p50 ms", "ttft p99 ms"], rows),
            f"ours / vLLM (paired per round): {peer['ours_vs_vllm']}",
        ]
    elif peer is not None:
        lines += ["", f"peer: {peer}"]
    train = result.get("train")
    if isinstance(train, dict) and train.get("status") == "ok":
        rows = [[name, mode["what"], mode["pairs_per_s"]["median"]] for name, mode in train["modes"].items()]
        lines += [
            "",
            f"trainer: yapo, {train['pairs']} pairs, batch {train['batch_size']}, {train['steps']} steps",
            *_table(["mode", "what", "pairs/s"], rows),
        ]
    elif train is not None:
        lines += ["", f"trainer: {train}"]
    lines += ["", json.dumps(result["summary"], sort_keys=False)]
    return lines


def write_json(result: dict[str, Any], path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(result, indent=1, default=str) + "\n")
    os.replace(tmp, path)
    return path
