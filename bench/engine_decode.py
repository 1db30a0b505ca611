"""The served engine's decode step: compiled vs eager, and what steering costs in it.

An `LoadedModel` over the benchmark's model (slots = the mixed batch) compiles its decode step for the buckets this
suite uses (1, 8 and the mixed batch) and verifies each against eager, as `steer serve` does at start-up. Then,
interleaved per round, the same decode runs (`ModelRunner.decode`, `new_tokens` steps after a `prompt_len`
prefill; no detokenizing) in these cases: eager and compiled at batch 1 and 8, unsteered and with the worst
YaPO vector (most non-zeros, half negative); and the mixed batch (every row its own vector) against the same
batch unsteered. Ratios are paired per round.
"""

from __future__ import annotations

from typing import Any

import torch

from bench.config import BenchConfig
from bench.timing import interleave, median, now, paired_ratio, summary
from bench.world import BenchWorld, distinct_vectors


def served_buckets(slots: int) -> list[int]:
    """The buckets the benchmark compiles: batch 1, 8 and the full batch (fewer graphs, a shorter start-up)."""
    return sorted({b for b in (1, 8, slots) if b <= slots})


def run_engine(world: BenchWorld, cfg: BenchConfig) -> dict[str, Any]:
    from server.engine.model import LoadedModel
    from server.engine.request import SteerSpec
    from server.engine.runner_io import NewRow
    from server.engine.sampling import SamplingParams

    mixed = cfg.mixed_batch
    sae = world.saes[0]
    coders = {sae.coder.layer: sae.coder}
    ctx = min(
        int(getattr(world.model.config, "max_position_embeddings", 2048)), cfg.prompt_len + cfg.new_tokens + 8
    )
    engine = LoadedModel(
        world.model, world.tokenizer, coders, name=world.model_name, max_batch=mixed, max_context=ctx
    )
    runner = engine.runner
    t0 = now()
    status = runner.compile("auto", cfg.compile_backend, buckets=served_buckets(mixed))
    compile_s = now() - t0
    compiled = runner.compiled

    worst = max((v for k, v in sae.vectors.items() if k != "trained"), key=lambda v: v.nnz)
    vectors = distinct_vectors(sae, world.model_ref(), mixed, cfg.ks, seed=cfg.seed + 53, prefix="bench/e")
    vocab = int(world.model.config.vocab_size)
    g = torch.Generator().manual_seed(cfg.seed + 17)
    prompts = [torch.randint(4, vocab, (cfg.prompt_len,), generator=g).tolist() for _ in range(mixed)]
    params = SamplingParams(max_new_tokens=10**6)

    def decode(b: int, specs: list[SteerSpec], use_compiled: bool) -> float:
        """Decode tokens/s of b rows for `new_tokens` steps."""
        for slot in range(runner.slots):
            runner.free(slot)
        rows = [NewRow(prompts[i], params, seed=i, steering=engine.steering.rows(specs[i])) for i in range(b)]
        runner.compiled = compiled if use_compiled else None
        try:
            runner.prefill(0, rows)
            t = now()
            for _ in range(cfg.new_tokens):
                runner.decode(0, b)
            return b * cfg.new_tokens / (now() - t)
        finally:
            runner.compiled = compiled

    plain = [SteerSpec()] * mixed
    steered = [SteerSpec(((worst, 1.0),))] * mixed
    distinct = [SteerSpec(((v, 1.0),)) for v in vectors]
    cases: dict[str, Any] = {}
    for b in sorted({1, min(8, mixed)}):
        for path, flag in (("eager", False), ("compiled", True)):
            cases[f"{path}_b{b}"] = lambda b=b, flag=flag: decode(b, plain, flag)
            cases[f"{path}_b{b}_steered"] = lambda b=b, flag=flag: decode(b, steered, flag)
    for path, flag in (("eager", False), ("compiled", True)):
        cases[f"{path}_b{mixed}"] = lambda flag=flag: decode(mixed, plain, flag)
        cases[f"{path}_b{mixed}_mixed"] = lambda flag=flag: decode(mixed, distinct, flag)
    try:
        rates = interleave(cases, cfg.repeats, cfg.warmup)
    finally:
        engine.close()

    def ratio(num: str, den: str) -> float:
        return round(paired_ratio(rates[num], rates[den]), 4)

    served = "compiled" if compiled is not None else "eager"
    out: dict[str, Any] = {
        "engine": {"mode": status.mode, "reason": status.reason, "buckets": status.buckets},
        "compile_s": round(compile_s, 2),
        "worst_vector_nnz": worst.nnz,
        "mixed_batch": mixed,
        "new_tokens": cfg.new_tokens,
        "prompt_len": cfg.prompt_len,
        "tok_s": {k: summary(v, digits=2) for k, v in rates.items()},
        "compiled_vs_eager_b1": ratio("compiled_b1", "eager_b1"),
        "compiled_vs_eager_b8": ratio(f"compiled_b{min(8, mixed)}", f"eager_b{min(8, mixed)}"),
        "served": served,
    }
    # overhead = steered time / unsteered time = unsteered rate / steered rate
    for path in ("eager", "compiled"):
        out[f"{path}_overhead_b1"] = ratio(f"{path}_b1", f"{path}_b1_steered")
        out[f"{path}_overhead_b{mixed}_mixed"] = ratio(f"{path}_b{mixed}", f"{path}_b{mixed}_mixed")
    out["overhead_b1"] = out[f"{served}_overhead_b1"]
    out["overhead_b32_mixed"] = out[f"{served}_overhead_b{mixed}_mixed"]
    out["decode_tok_s_b1_compiled"] = round(median(rates["compiled_b1"]), 2)
    return out
