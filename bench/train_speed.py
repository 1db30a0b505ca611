"""Trainer speed: YaPO preference pairs per second, fast path + cached π_0 versus the reference way.

Both runs go through `trainer.train.train_vector` on the benchmark's model and SAE with the same synthetic pairs;
`reference_mode=True` is the trainer's own switch for the reference implementation's cost (full SAE round trip at
every token, π_0 recomputed at every step). The trainer's `pairs_per_second` counts from after tokenisation and
includes computing the cached π_0 log-probs, so the fast number is not flattered by leaving that out.
"""

from __future__ import annotations

import dataclasses
import random
from typing import Any

from bench.config import BenchConfig
from bench.timing import interleave, median, now, paired_ratio, summary
from bench.world import WORDS, BenchWorld


def not_available(reason: str) -> dict[str, Any]:
    return {"status": "not available", "reason": reason}


def synthetic_pairs(n: int, seed: int) -> list[Any]:
    """`n` (prompt, chosen, rejected) pairs with different answers."""
    from trainer.data import PreferencePair

    rng = random.Random(seed)
    out = []
    for i in range(n):
        chosen, rejected = rng.sample(WORDS, 2)
        extra = rng.choice(WORDS)
        out.append(
            PreferencePair(
                prompt=f"In country {i % 10} at the {extra} people like",
                chosen=f"{chosen} and tea",
                rejected=f"{rejected} and bread",
            )
        )
    return out


def run_train(world: BenchWorld, cfg: BenchConfig) -> dict[str, Any]:
    """pairs/s of `train_vector(method="yapo")` with and without `reference_mode`, interleaved."""
    try:
        from trainer.config import TrainConfig
        from trainer.resources import Resources
        from trainer.train import train_vector
    except ImportError as exc:
        return not_available(f"trainer not importable: {exc}")
    if "reference_mode" not in {f.name for f in dataclasses.fields(TrainConfig)}:
        return not_available("trainer.train.TrainConfig has no reference_mode")

    sae = world.saes[0]
    res = Resources(
        model=world.model,
        tokenizer=world.tokenizer,
        model_name=world.model_name,
        coder=sae.coder,
        sae_source=sae.coder.source,
    )
    pairs = synthetic_pairs(cfg.train_pairs, cfg.seed)
    steps = cfg.train_epochs * -(-cfg.train_pairs // cfg.train_batch)

    def run(reference: bool) -> dict[str, float]:
        tc = TrainConfig(
            method="yapo",
            model=world.model_name,
            name="bench/yapo",
            batch_size=cfg.train_batch,
            max_steps=steps,
            warmup_steps=0,
            log_every=10**9,
            checkpoint_every=10**9,
            progress=False,
            device=str(world.device),
            dtype=str(world.dtype).removeprefix("torch."),
            reference_mode=reference,
            seed=cfg.seed,
        )
        t0 = now()
        result = train_vector(tc, resources=res, pairs=pairs)
        wall = now() - t0
        pps = result.pairs_per_second or steps * cfg.train_batch / wall
        return {"pairs_per_s": pps, "wall_s": wall}

    samples = interleave(
        {"fast": lambda: run(False), "reference": lambda: run(True)}, cfg.repeats, cfg.warmup
    )
    pps = {k: [s["pairs_per_s"] for s in v] for k, v in samples.items()}
    return {
        "status": "ok",
        "method": "yapo",
        "pairs": cfg.train_pairs,
        "batch_size": cfg.train_batch,
        "steps": steps,
        "sae": sae.label,
        "modes": {
            "fast": {
                "what": "exact fast form, pi_0 cached once",
                "pairs_per_s": summary(pps["fast"], 3),
                "wall_s": summary([s["wall_s"] for s in samples["fast"]]),
            },
            "reference": {
                "what": "full SAE round trip, pi_0 recomputed every step",
                "pairs_per_s": summary(pps["reference"], 3),
                "wall_s": summary([s["wall_s"] for s in samples["reference"]]),
            },
        },
        "fast_vs_reference": round(paired_ratio(pps["fast"], pps["reference"]), 4),
        "fast_pairs_per_s_median": round(median(pps["fast"]), 3),
    }
