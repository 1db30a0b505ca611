"""The 32-client step before and after issue 25's cuts, A/B in one process: `python -m bench.step_ab [--rounds 4]`.

Loads the Gemma 3 270M shape's random world as `bench.profile_step` does and compares, interleaved per round (the
order alternates), CPU time per call of this thread (torch on `--threads` threads, default 1):

- the compiled decode step over 32 rows (`ModelRunner.decode`, greedy, after prompts of `--prompt` tokens), as
  before (`before`: the K/V written by a `scatter_` into the bound rows' slice, and transformers' own SDPA, which
  repeats K and V per query head under `torch.compile`) and as now (`after`: `SlotCache.write`'s `index_put_`
  and `server.engine.attention.grouped_sdpa`); one graph each, both built at start;
- the prefill of 31 prompts of 15-17 tokens (`ModelRunner.prefill`), with the lm_head on every row's distinct
  last positions (`before`, `logits_to_keep`) and on each row's own last position (`after`).

Tokens must be identical between the variants (checked every round). Prints before / after per round and the
medians. `--change cache` or `--change attention` makes `before` differ from `after` in that part alone.
`--steering` instead times `after` with every row its own random YaPO vector (k 16 / 64 / 256, half negative: 8, 32
and 128 negative features) against unsteered rows, decode step and prefill: steered / unsteered.
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

import torch

from bench.profile_step import load_shape_engine
from server.engine.slot_cache import SlotCache


class ScatterCache(SlotCache):
    """The slot cache's previous write: `scatter_` into the rows' slice (copied whole by inductor)."""

    def write(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        n, heads, q, dim = k.shape
        rows = slice(self.start, self.start + n)
        index = self.positions[:, None, :, None].expand(n, heads, q, dim)
        keys, values = self.keys[layer][rows], self.values[layer][rows]
        keys.scatter_(2, index, k.to(keys.dtype))
        values.scatter_(2, index, v.to(values.dtype))
        return keys[:, :, : self.kv_len], values[:, :, : self.kv_len]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--prompt", type=int, default=16, help="prompt tokens before the decode steps")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--change", choices=("all", "cache", "attention"), default="all")
    parser.add_argument(
        "--steering", action="store_true", help="steered / unsteered instead of before / after"
    )
    args = parser.parse_args()

    from server.engine.attention import NAME
    from server.engine.runner_io import NewRow
    from server.engine.sampling import SamplingParams

    torch.set_num_threads(args.threads)
    engine = load_shape_engine("gemma3-270m")
    runner, model = engine.runner, engine.model
    after_cache = type(runner.cache)
    attention = {"before": "sdpa" if args.change != "cache" else NAME, "after": NAME}
    caches = {"before": ScatterCache if args.change != "attention" else after_cache, "after": after_cache}
    head = runner._head
    compiled: dict[str, Any] = {}

    def use(variant: str) -> None:
        runner.cache.__class__ = caches[variant]
        model.set_attn_implementation(attention[variant])
        runner._head = head if variant == "after" else lambda: None  # type: ignore[method-assign]
        if variant in compiled:
            runner.compiled = compiled[variant]

    for variant in ("after",) if args.steering else ("before", "after"):
        use(variant)
        t0 = time.perf_counter()
        status = runner.compile("compiled", "inductor", [32])
        print(f"{variant}: compile {time.perf_counter() - t0:.0f} s, {status.buckets}", flush=True)
        compiled[variant] = runner.compiled

    vocab = int(model.config.vocab_size)
    g = torch.Generator().manual_seed(0)
    params = SamplingParams(max_new_tokens=10**6)
    decode_prompts = [torch.randint(4, vocab, (args.prompt,), generator=g).tolist() for _ in range(32)]
    prefill_prompts = [torch.randint(4, vocab, (15 + i % 3,), generator=g).tolist() for i in range(31)]

    steering: list[dict[int, Any]] = [{} for _ in range(32)]

    def fill(prompts: list[list[int]]) -> tuple[float, list[int]]:
        for slot in range(runner.slots):
            runner.free(slot)
        rows = [NewRow(p, params, seed=i, steering=steering[i]) for i, p in enumerate(prompts)]
        t0 = time.thread_time()
        out = runner.prefill(0, rows)
        return time.thread_time() - t0, out.tokens

    def decode(variant: str) -> tuple[float, list[list[int]]]:
        use(variant)
        fill(decode_prompts)
        runner.decode(0, 32)
        t0 = time.thread_time()
        tokens = [runner.decode(0, 32).tokens for _ in range(args.steps)]
        return (time.thread_time() - t0) / args.steps, tokens

    def prefill(variant: str) -> tuple[float, list[int]]:
        use(variant)
        return fill(prefill_prompts)

    cases = {"decode": decode, "prefill": prefill}
    if args.steering:
        steer_ab(engine, cases, steering, args.rounds)
        return
    times: dict[tuple[str, str], list[float]] = {}
    seen: dict[str, Any] = {}
    for r in range(args.rounds):
        for case, fn in cases.items():
            for variant in ("before", "after")[:: 1 if r % 2 == 0 else -1]:
                seconds, tokens = fn(variant)
                if seen.setdefault(case, tokens) != tokens:
                    raise AssertionError(f"{case}: {variant} gave other tokens")
                times.setdefault((case, variant), []).append(seconds)
            before, after = times[(case, "before")][-1], times[(case, "after")][-1]
            print(
                f"round {r} {case}: before {before * 1e3:.0f} ms, after {after * 1e3:.0f} ms (CPU)",
                flush=True,
            )
    for case in cases:
        ratios = [b / a for b, a in zip(times[(case, "before")], times[(case, "after")], strict=True)]
        rounds = ", ".join(f"{x:.2f}" for x in ratios)
        med = {v: statistics.median(times[(case, v)]) * 1e3 for v in ("before", "after")}
        print(
            f"{case}: before / after {statistics.median(ratios):.2f} (rounds {rounds}); "
            f"median CPU ms before {med['before']:.0f}, after {med['after']:.0f}"
        )


def steer_ab(engine: Any, cases: dict[str, Any], steering: list[dict[int, Any]], rounds: int) -> None:
    """Steered (`steering` filled with 32 distinct YaPO rows) / unsteered CPU time of each case, interleaved."""
    from bench.world import random_vector
    from server.engine.request import SteerSpec
    from vectors.metadata import ModelRef

    coder = next(iter(engine.coders.values()))
    info = engine.model_info()
    ref = ModelRef(name=info.name, hidden_size=info.hidden_size, num_layers=info.num_layers)
    vectors = [
        random_vector(coder, ref, (16, 64, 256)[i % 3], name=f"bench/s{i:03d}", seed=i + 1) for i in range(32)
    ]
    rows = [engine.steering.rows(SteerSpec(((v, 1.0),))) for v in vectors]
    times: dict[tuple[str, bool], list[float]] = {}
    for r in range(rounds):
        for case, fn in cases.items():
            for steered in (True, False)[:: 1 if r % 2 == 0 else -1]:
                steering[:] = rows if steered else [{} for _ in rows]
                times.setdefault((case, steered), []).append(fn("after")[0])
            on, off = times[(case, True)][-1], times[(case, False)][-1]
            print(
                f"round {r} {case}: steered {on * 1e3:.0f} ms, unsteered {off * 1e3:.0f} ms (CPU)", flush=True
            )
    for case in cases:
        ratios = [a / b for a, b in zip(times[(case, True)], times[(case, False)], strict=True)]
        rounds_s = ", ".join(f"{x:.3f}" for x in ratios)
        print(f"{case}: steered / unsteered {statistics.median(ratios):.3f} (rounds {rounds_s})")


if __name__ == "__main__":
    main()
