"""Decode speed with and without steering, measured on the model forward itself (no server, no sampling).

A small greedy decode loop with a KV cache: one prefill of `prompt_len` tokens (its time, with the first token's
argmax, is the time to first token), then `new_tokens` single-token forwards (decode tokens/s). Cases at each
batch size, interleaved: no steering; a dense vector; each YaPO vector by the exact fast path (the server's per-slot
buffers, `vectors.slots.SlotSteering`); the same vectors by the reference full SAE round trip (`bench.reference`). Then one batch in
which every row has a different steering config, against the same batch unsteered.
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from transformers import DynamicCache

from bench.config import BenchConfig
from bench.reference import reference_hooks
from bench.timing import interleave, median, now, paired_ratio, summary, synchronizer
from bench.world import BenchWorld, SaeSetup, distinct_vectors, negative_entries
from vectors.slots import SlotSteering, compose

SteerContext = Callable[[], contextlib.AbstractContextManager[Any]]


@dataclass(frozen=True)
class DecodeSample:
    ttft_s: float  # prefill + first token
    decode_s: float  # the `steps` single-token forwards after it
    steps: int
    batch: int


@dataclass
class Case:
    """One thing to time: how to steer, and what it is (for the report)."""

    steer: SteerContext
    info: dict[str, Any]


def cache_kwarg(model: Any) -> str:
    """transformers 5 calls the KV cache argument `cache`; earlier versions `past_key_values`."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def decode_once(
    model: Any,
    ids: torch.Tensor,
    steps: int,
    steer: SteerContext,
    sync: Callable[[], None],
    prefills: int = 1,
) -> DecodeSample:
    """Greedy-decode `steps` tokens after the prompt `ids` [B, P] inside the steering context.

    The prefill runs `prefills` times (fresh cache each time; the median is the time to first token), because
    one prefill is short enough for a busy machine to distort it; decoding continues from the last one.
    """
    kw = cache_kwarg(model)
    with torch.inference_mode(), steer():
        ttfts = []
        for _ in range(prefills):
            cache = DynamicCache()
            sync()
            t0 = now()
            out = model(input_ids=ids, use_cache=True, logits_to_keep=1, **{kw: cache})
            tok = out.logits[:, -1].argmax(-1, keepdim=True)
            sync()
            ttfts.append(now() - t0)
        t1 = now()
        for _ in range(steps):
            out = model(input_ids=tok, use_cache=True, logits_to_keep=1, **{kw: cache})
            tok = out.logits[:, -1].argmax(-1, keepdim=True)
        sync()
        t2 = now()
    return DecodeSample(ttft_s=median(ttfts), decode_s=t2 - t1, steps=steps, batch=int(ids.shape[0]))


def prompts(world: BenchWorld, batch: int, length: int, seed: int) -> torch.Tensor:
    """Random prompt token ids [batch, length] (away from the first few special ids)."""
    g = torch.Generator().manual_seed(seed + batch)
    vocab = int(world.model.config.vocab_size)
    return torch.randint(min(4, vocab - 1), vocab, (batch, length), generator=g).to(world.device)


def _tables_ctx(
    world: BenchWorld,
    configs: list[dict[Any, float]],
    sae: SaeSetup | None = None,
    layers: list[int] | None = None,
) -> tuple[SteerContext, float]:
    """A steering context with `configs` (one per row) written into per-slot buffers, and the write time in ms."""
    coders = {sae.coder.layer: sae.coder} if sae is not None else {}
    d_model = int(world.model.config.hidden_size)

    @contextlib.contextmanager
    def ctx() -> Any:
        rows = [compose(c, coders, d_model) for c in configs]
        max_neg = max((r.neg_idx.numel() for layer in rows for r in layer.values()), default=0)
        hooked = layers if layers is not None else sorted({i for layer in rows for i in layer})
        steering = SlotSteering(world.model, coders, len(configs), max_neg=max_neg, layers=hooked)
        try:
            for slot, r in enumerate(rows):
                steering.write(slot, r)
            steering.select(0, len(configs), "prompt")
            yield
        finally:
            steering.close()

    t0 = now()
    with ctx():
        pass
    build_ms = (now() - t0) * 1e3
    return ctx, build_ms


def batch_cases(world: BenchWorld, batch: int) -> dict[str, Case]:
    """The cases at one batch size: none; hooks-only (the hooks on, every row unsteered: the cost of the hook
    machinery alone); dense; then fast and reference for every (SAE, vector)."""
    cases: dict[str, Case] = {
        "none": Case(contextlib.nullcontext, {"variant": "none"}),
    }
    hooks_ctx, _ = _tables_ctx(world, [{}] * batch, world.saes[0], layers=[world.layer])
    cases["hooks-only"] = Case(hooks_ctx, {"variant": "hooks-only"})
    dense_ctx, dense_ms = _tables_ctx(world, [{world.dense: 1.0}] * batch)
    cases["dense"] = Case(dense_ctx, {"variant": "dense", "table_build_ms": round(dense_ms, 3)})
    for sae in world.saes:
        for label, vec in sae.vectors.items():
            if label == "trained" and batch != 1:
                continue
            info = {
                "sae": sae.label,
                "d_sae": sae.coder.d_sae,
                "vector": label,
                "nnz": vec.nnz,
                "negative": negative_entries(vec),
            }
            fast, build_ms = _tables_ctx(world, [{vec: 1.0}] * batch, sae)
            info_fast = {"variant": "fast", **info, "table_build_ms": round(build_ms, 3)}
            cases[f"fast/{sae.label}/{label}"] = Case(fast, info_fast)
            u = vec.code_vector()
            coder = sae.coder
            cases[f"reference/{sae.label}/{label}"] = Case(
                lambda coder=coder, u=u: reference_hooks(world.model, coder, u),
                {"variant": "reference", **info},
            )
    return cases


def mixed_cases(world: BenchWorld, cfg: BenchConfig) -> tuple[dict[str, Case], int]:
    """Batch `cfg.mixed_batch` with a distinct config per row (distinct vectors, distinct strengths)."""
    sae = world.saes[0]
    batch = cfg.mixed_batch
    vecs = distinct_vectors(sae, world.model_ref(), batch, cfg.ks, seed=cfg.seed + 17)
    strengths = [0.5 + i / max(1, batch - 1) for i in range(batch)]
    configs = [{v: s} for v, s in zip(vecs, strengths, strict=True)]
    fast, build_ms = _tables_ctx(world, configs, sae)
    u = torch.stack([s * v.code_vector() for v, s in zip(vecs, strengths, strict=True)])
    coder = sae.coder
    info = {"sae": sae.label, "d_sae": coder.d_sae, "distinct_configs": batch}
    cases = {
        "none": Case(contextlib.nullcontext, {"variant": "none"}),
        "fast": Case(fast, {"variant": "fast", **info, "table_build_ms": round(build_ms, 3)}),
        "reference": Case(lambda: reference_hooks(world.model, coder, u), {"variant": "reference", **info}),
    }
    return cases, batch


def _measure(
    world: BenchWorld, cases: dict[str, Case], batch: int, cfg: BenchConfig, sync: Callable[[], None]
) -> list[dict[str, Any]]:
    ids = prompts(world, batch, cfg.prompt_len, cfg.seed)
    runs = {
        name: (lambda c=c: decode_once(world.model, ids, cfg.new_tokens, c.steer, sync, cfg.ttft_prefills))
        for name, c in cases.items()
    }
    samples = interleave(runs, cfg.repeats, cfg.warmup)
    base = samples["none"]
    rows = []
    for name, case in cases.items():
        s = samples[name]
        decode = [x.decode_s for x in s]
        row: dict[str, Any] = {
            "batch": batch,
            "case": name,
            **case.info,
            "ttft_ms": summary([x.ttft_s * 1e3 for x in s]),
            "ms_per_step": summary([x.decode_s * 1e3 / x.steps for x in s]),
            "decode_tok_s": summary([x.batch * x.steps / x.decode_s for x in s], digits=2),
            "overhead": round(paired_ratio(decode, [x.decode_s for x in base]), 4),
            "ttft_overhead": round(paired_ratio([x.ttft_s for x in s], [x.ttft_s for x in base]), 4),
        }
        rows.append(row)
    return rows


@torch.inference_mode()
def check_equivalence(world: BenchWorld, cfg: BenchConfig) -> dict[str, Any]:
    """Prefill logits at batch 1: fast vs reference (should agree to rounding), and steered vs unsteered."""
    ids = prompts(world, 1, cfg.prompt_len, cfg.seed)

    def logits(steer: SteerContext) -> torch.Tensor:
        with steer():
            return world.model(input_ids=ids, use_cache=False).logits.float()

    base = logits(contextlib.nullcontext)
    out: dict[str, Any] = {}
    for sae in world.saes:
        for label, vec in sae.vectors.items():
            fast = logits(_tables_ctx(world, [{vec: 1.0}], sae)[0])
            ref = logits(lambda sae=sae, vec=vec: reference_hooks(world.model, sae.coder, vec.code_vector()))
            out[f"{sae.label}/{label}"] = {
                "fast_vs_reference_max_abs": float((fast - ref).abs().max()),
                "steered_vs_unsteered_max_abs": float((fast - base).abs().max()),
            }
    return out


def run_decode(world: BenchWorld, cfg: BenchConfig) -> dict[str, Any]:
    """Every batch size, then the mixed batch; returns the JSON section."""
    sync = synchronizer(world.device)
    rows: list[dict[str, Any]] = []
    for batch in cfg.batch_sizes:
        rows += _measure(world, batch_cases(world, batch), batch, cfg, sync)
    mixed, mixed_batch = mixed_cases(world, cfg)
    return {
        "prompt_len": cfg.prompt_len,
        "new_tokens": cfg.new_tokens,
        "repeats": cfg.repeats,
        "cases": rows,
        "mixed": _measure(world, mixed, mixed_batch, cfg, sync),
        "check": check_equivalence(world, cfg),
    }
