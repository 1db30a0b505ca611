"""Profile the served decode step: `python -m bench.profile_step [--shape culture] [--threads 1] [--buckets 1,32]`.

Loads `--shape`'s random world (`bench.world.shape_folder`; `culture`: the random world of the culture world's
shape, `bench.world.random_world`) as `steer serve` does (32 slots × 512 positions, its SAE), compiles and verifies the buckets (`--eager`: none), then for batch 1 and 32 and prompts of 16 and 200
tokens prints the prefill time and the mean decode step, and torch.profiler's top operators over three steps.
Uses only `LoadedModel` / `ModelRunner` calls that older commits have too, so the same command profiles them.
"""

from __future__ import annotations

import argparse
import time

import torch

from bench.config import BenchConfig
from bench.world import random_world, shape_folder
from server.engine.model import EngineConfig, LoadedModel


def load_shape_engine(shape: str) -> LoadedModel:
    """`shape`'s random world loaded as `steer serve` loads it (32 slots × 512 positions, its SAE), eager."""
    if shape == "culture":
        world = random_world(BenchConfig.quick(world=None))
        coder = world.saes[0].coder
        return LoadedModel(world.model, world.tokenizer, {coder.layer: coder}, max_batch=32, max_context=512)
    folder = shape_folder(BenchConfig.real_shape(shape))
    config = EngineConfig(
        model=str(folder / "model"), sae=(str(folder / "sae"),), device="cpu", max_batch=32, max_context=512
    )
    return LoadedModel.load(config)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--shape", default="gemma3-270m", help="gemma3-270m, or culture (the 96-128 wide world)"
    )
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--buckets", default="1,32", help="compiled buckets (comma-separated)")
    parser.add_argument("--eager", action="store_true", help="profile the eager step")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--rows", default="1,32", help="batch sizes")
    parser.add_argument("--prompts", default="16,200", help="prompt lengths")
    args = parser.parse_args()

    from server.engine.runner_io import NewRow
    from server.engine.sampling import SamplingParams

    torch.set_num_threads(args.threads)
    engine = load_shape_engine(args.shape)
    runner = engine.runner
    if not args.eager:
        t0 = time.perf_counter()
        status = runner.compile("compiled", "inductor", [int(b) for b in args.buckets.split(",")])
        print(f"compile + self-check: {time.perf_counter() - t0:.1f} s, {status.buckets}", flush=True)
    vocab = int(engine.model.config.vocab_size)
    g = torch.Generator().manual_seed(0)

    def fill(b: int, length: int) -> float:
        for slot in range(runner.slots):
            runner.free(slot)
        rows = [
            NewRow(
                torch.randint(4, vocab, (length,), generator=g).tolist(),
                SamplingParams(max_new_tokens=10**6),
                seed=i,
                steering={},
            )
            for i in range(b)
        ]
        t0 = time.perf_counter()
        runner.prefill(0, rows)
        return time.perf_counter() - t0

    for b in (int(x) for x in args.rows.split(",")):
        for length in (int(x) for x in args.prompts.split(",")):
            prefill = fill(b, length)
            runner.decode(0, b)
            t0 = time.perf_counter()
            for _ in range(args.steps):
                runner.decode(0, b)
            step = (time.perf_counter() - t0) / args.steps
            print(
                f"batch {b}, prompt {length}: prefill {prefill * 1e3:.0f} ms, step {step * 1e3:.0f} ms",
                flush=True,
            )
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            for _ in range(3):
                runner.decode(0, b)
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=8), flush=True)


if __name__ == "__main__":
    main()
