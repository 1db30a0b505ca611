"""The way most researchers steer today, next to the served engine: Hugging Face `generate` with a forward hook.

A steering-vectors / repeng-style hook (on a copy of the model with stock transformers modules) adds a dense vector to one decoder layer's output at every position of
every forward, and `generate` decodes greedily with its own cache: at batch 1, and for `clients` concurrent prompts
as one left-padded batch (the best a script does with many prompts). Against it, interleaved per round, the
engine's served decode path (`LoadedModel.generate`: continuous batching over slots, the compiled step of buckets 1
and `clients`) on the same prompts, same lengths, each row steered by the same vector through its slot. Ratios:
engine tokens/s over HF tokens/s.
"""

from __future__ import annotations

import copy
from typing import Any

import torch

from bench.config import BenchConfig
from bench.timing import interleave, median, now, paired_ratio, summary
from bench.world import BenchWorld
from vectors.hooks import layer_hook


def run_hf(world: BenchWorld, cfg: BenchConfig) -> dict[str, Any]:
    from server.engine.model import LoadedModel
    from server.engine.packed import unpack_linears
    from server.engine.request import Row, SteerSpec
    from server.engine.sampling import SamplingParams

    n, tokens = cfg.clients, cfg.new_tokens
    sae = world.saes[0]
    stock = copy.deepcopy(world.model)  # HF's side: stock transformers modules, none of the engine's hooks
    unpack_linears(stock)
    engine = LoadedModel(
        world.model,
        world.tokenizer,
        {sae.coder.layer: sae.coder},
        name=world.model_name,
        max_batch=n,
        max_context=cfg.prompt_len + tokens + 8,
    )
    engine.eos_ids = frozenset()
    status = engine.compile("auto", cfg.compile_backend, sorted({1, n}))
    vocab = int(world.model.config.vocab_size)
    g = torch.Generator().manual_seed(cfg.seed + 61)
    prompts = [torch.randint(4, vocab, (cfg.prompt_len,), generator=g).tolist() for _ in range(n)]
    dense = world.dense.dense
    assert dense is not None
    delta = dense.to(world.device, world.dtype)
    spec = SteerSpec(((world.dense, 1.0),))

    def served(b: int) -> float:
        rows = [Row(p, SamplingParams(max_new_tokens=tokens), spec) for p in prompts[:b]]
        t0 = now()
        engine.generate(rows)
        return sum(len(r.output_ids) for r in rows) / (now() - t0)

    def hf(b: int) -> float:
        ids = torch.tensor(prompts[:b], device=world.device)
        mask = torch.ones_like(ids)
        t0 = now()
        with torch.inference_mode(), layer_hook(stock, world.layer, lambda h: h + delta):
            out = stock.generate(
                input_ids=ids,
                attention_mask=mask,
                max_new_tokens=tokens,
                min_new_tokens=tokens,
                do_sample=False,
                pad_token_id=0,
            )
        return b * (out.shape[1] - ids.shape[1]) / (now() - t0)

    cases = {}
    for b in sorted({1, n}):
        cases[f"engine_b{b}"] = lambda b=b: served(b)
        cases[f"hf_b{b}"] = lambda b=b: hf(b)
    try:
        rates = interleave(cases, cfg.repeats, cfg.warmup)
    finally:
        engine.close()
    out: dict[str, Any] = {
        "engine": {"mode": status.mode, "reason": status.reason, "buckets": status.buckets},
        "clients": n,
        "prompt_len": cfg.prompt_len,
        "new_tokens": tokens,
        "tok_s": {k: summary(v, digits=2) for k, v in rates.items()},
    }
    for b in sorted({1, n}):
        out[f"engine_vs_hf_b{b}"] = round(paired_ratio(rates[f"engine_b{b}"], rates[f"hf_b{b}"]), 4)
        out[f"hf_tok_s_b{b}"] = round(median(rates[f"hf_b{b}"]), 2)
    return out
