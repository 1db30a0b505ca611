"""Which linear layers to pack, A/B in one process: `python -m bench.packed_ab [--shape culture] [--rows 1,2,32]`.

Loads the world as `bench.profile_step` does and times the eager decode step (`ModelRunner.decode`, unsteered,
greedy, after a 16-token prompt) under two packing rules, interleaved per round (the order alternates): `previous`
(every linear layer packed, the packed product from 4 rows) and `current` (`server.engine.packed`'s
`PACKED_MIN_WEIGHT` and `PACKED_MIN_ROWS`). Per step it reads the thread's CPU time, which a busy machine's other
processes do not inflate the way they do wall time (torch runs on 1 thread here), and prints previous / current per
round and their median.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from bench.profile_step import load_shape_engine

RULES = {"previous": (0, 4), "current": (None, None)}  # (min_weight, min_rows); None: the module's default


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--shape", default="gemma3-270m", help="gemma3-270m, or culture (the 96-128 wide world)"
    )
    parser.add_argument("--rows", default="1,2,32", help="batch sizes")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--steps", type=int, default=3)
    args = parser.parse_args()

    from server.engine import packed
    from server.engine.runner_io import NewRow
    from server.engine.sampling import SamplingParams

    torch.set_num_threads(1)
    engine = load_shape_engine(args.shape)
    runner = engine.runner
    default_rows = packed.PACKED_MIN_ROWS
    vocab = int(engine.model.config.vocab_size)
    g = torch.Generator().manual_seed(0)
    prompts = [torch.randint(4, vocab, (16,), generator=g).tolist() for _ in range(32)]

    def use(rule: str) -> None:
        min_weight, min_rows = RULES[rule]
        packed.unpack_linears(engine.model)
        packed.pack_linears(engine.model, min_weight=min_weight)
        packed.PACKED_MIN_ROWS = default_rows if min_rows is None else min_rows

    def step_ms(b: int) -> float:
        for slot in range(runner.slots):
            runner.free(slot)
        params = SamplingParams(max_new_tokens=10**6)
        runner.prefill(0, [NewRow(prompts[i], params, seed=i, steering={}) for i in range(b)])
        runner.decode(0, b)
        t0 = time.thread_time()
        for _ in range(args.steps):
            runner.decode(0, b)
        return (time.thread_time() - t0) / args.steps * 1e3

    for rule in RULES:
        use(rule)
        n = sum(isinstance(m, packed.PackedLinear) for m in engine.model.modules())
        print(f"{rule}: {n} packed layers, packed product from {packed.PACKED_MIN_ROWS} rows", flush=True)
    times: dict[tuple[str, int], list[float]] = {}
    for r in range(args.rounds):
        for b in (int(x) for x in args.rows.split(",")):
            for rule in list(RULES)[:: 1 if r % 2 == 0 else -1]:
                use(rule)
                times.setdefault((rule, b), []).append(step_ms(b))
            prev, cur = times[("previous", b)][-1], times[("current", b)][-1]
            print(
                f"round {r} rows {b}: previous {prev:.1f} ms, current {cur:.1f} ms (CPU time per step)",
                flush=True,
            )
    for b in (int(x) for x in args.rows.split(",")):
        ratios = [p / c for p, c in zip(times[("previous", b)], times[("current", b)], strict=True)]
        rounds = ", ".join(f"{x:.2f}" for x in ratios)
        print(f"rows {b}: previous / current {statistics.median(ratios):.2f} (rounds {rounds})")


if __name__ == "__main__":
    main()
