"""The cost of one arrival: admitting a row into a running batch must not grow with the others' contexts.

A served engine (`server.engine.LoadedModel`, `max_batch` slots) holds 31 running rows whose contexts are long (400
tokens) or short (20); the timed operation is admitting one more row (`Batcher.add`: its prefill into a free slot
and its steering written in place), which is then cancelled and admitted again. `join_cost_ratio` = long / short,
paired per round. With the v1 engine (a `DynamicCache` rebuilt on every join) it grew with the running contexts.
"""

from __future__ import annotations

from typing import Any

import torch

from bench.config import BenchConfig
from bench.timing import interleave, median, now, paired_ratio, summary
from bench.world import BenchWorld


def run_join(world: BenchWorld, cfg: BenchConfig) -> dict[str, Any]:
    from server.engine.model import LoadedModel
    from server.engine.request import Row, SteerSpec
    from server.engine.sampling import SamplingParams

    running = cfg.clients - 1
    ctx = int(getattr(world.model.config, "max_position_embeddings", 512))
    short_len = 20
    long_len = min(400, ctx - short_len - 8)  # the newcomer must still fit
    coders = {s.coder.layer: s.coder for s in world.saes[:1]}
    engine = LoadedModel(
        world.model, world.tokenizer, coders, name=world.model_name, max_batch=cfg.clients, max_context=ctx
    )
    engine.eos_ids = frozenset()
    vocab = int(world.model.config.vocab_size)
    g = torch.Generator().manual_seed(cfg.seed + 41)

    def ids(n: int) -> list[int]:
        return torch.randint(4, vocab, (n,), generator=g).tolist()

    vector = next(iter(world.saes[0].vectors.values()))
    steer = SteerSpec(((vector, 1.0),))
    batcher = engine.batcher()
    newcomer = ids(short_len)

    def admit(length: int) -> float:
        """31 running rows of `length` tokens, then the timed admission of one more."""
        batcher.rows.clear()
        for slot in range(engine.runner.slots):
            engine.runner.free(slot)
        batcher.add([Row(ids(length), SamplingParams(max_new_tokens=10**6), steer) for _ in range(running)])
        seq = Row(newcomer, SamplingParams(max_new_tokens=10**6), steer)
        t0 = now()
        batcher.add([seq])
        return now() - t0

    try:
        times = interleave(
            {"long": lambda: admit(long_len), "short": lambda: admit(short_len)},
            cfg.repeats,
            cfg.warmup,
        )
    finally:
        engine.close()
    return {
        "running_rows": running,
        "long_context": long_len,
        "short_context": short_len,
        "join_ms": {k: summary([t * 1e3 for t in v]) for k, v in times.items()},
        "join_cost_ratio": round(paired_ratio(times["long"], times["short"]), 4),
        "join_ms_long_median": round(median(times["long"]) * 1e3, 3),
    }
