"""The serving loop at N concurrent clients, traced: what the engine thread does between a burst's arrivals and
its last token.

    python -m bench.serve_trace serve TRACE.jsonl -- <steer serve arguments>   # the server, traced
    python -m bench.serve_trace drive URL [--clients 32] [--tokens 16] [--rounds 3]
    python -m bench.serve_trace show TRACE.jsonl                                # the timeline of the last bursts

`serve` runs `steer serve` with `Scheduler.submit`, `Batcher._prefill` and `Batcher.step` timed into a JSON line
each (start, wall seconds, the engine thread's CPU seconds, rows, prompt tokens); `drive` sends `bench.peer`'s
burst (streamed `/v1/completions`, greedy, `ignore_eos`) and prints tokens/s and time to first token per round;
`show` prints each event after the first submit of each burst. A diagnostic, not a benchmark: wall times on a
shared machine swing with its load (compare CPU seconds, or ratios taken inside one process).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from typing import IO, Any


def _write(out: IO[str], kind: str, t0: float, c0: float, n: int, **extra: Any) -> None:
    rec = {"k": kind, "t0": t0, "dt": time.perf_counter() - t0, "cpu": time.thread_time() - c0, "n": n}
    out.write(json.dumps({**rec, **extra}) + "\n")


def serve(trace: str, argv: list[str]) -> int:
    """`steer serve argv` with its scheduler and batcher timed into `trace`."""
    from server.engine.batcher import Batcher
    from server.engine.scheduler import Scheduler
    from steer_cli import main as steer_main

    out = open(trace, "a", buffering=1)  # noqa: SIM115 (open for the server's life)
    prefill, step, submit = Batcher._prefill, Batcher.step, Scheduler.submit

    def timed_prefill(self: Batcher, seqs: list[Any]) -> None:
        t0, c0 = time.perf_counter(), time.thread_time()
        prefill(self, seqs)
        _write(out, "prefill", t0, c0, len(seqs), tokens=sum(len(s.prompt_ids) for s in seqs))

    def timed_step(self: Batcher) -> None:
        t0, c0, n = time.perf_counter(), time.thread_time(), len(self.rows)
        step(self)
        _write(out, "step", t0, c0, n)

    def timed_submit(self: Scheduler, seqs: list[Any], *, stream: bool = True) -> Any:
        _write(out, "submit", time.perf_counter(), time.thread_time(), len(seqs))
        return submit(self, seqs, stream=stream)

    Batcher._prefill = timed_prefill  # type: ignore[method-assign]
    Batcher.step = timed_step  # type: ignore[method-assign]
    Scheduler.submit = timed_submit  # type: ignore[method-assign]
    sys.argv = ["steer", "serve", *argv]
    return int(steer_main() or 0)


def drive(url: str, clients: int, tokens: int, rounds: int, model: str) -> None:
    from bench.peer import _pass, request_bodies

    prompts = [f"In country {i % 10} at the festival number {i} people like" for i in range(clients)]
    bodies = request_bodies(model, prompts, tokens)
    for r in range(rounds):
        p = asyncio.run(_pass(url, bodies, clients))
        ttft = sorted(p.ttft)
        print(
            f"round {r}: {p.seconds:.2f} s, {p.tokens} tokens, {p.tokens_per_s:.1f} tok/s, "
            f"TTFT min {ttft[0]:.2f} / p50 {ttft[len(ttft) // 2]:.2f} / max {ttft[-1]:.2f} s",
            flush=True,
        )


def show(trace: str) -> None:
    """Each burst (a run of submits) and what the engine did until the next one."""
    with open(trace) as f:
        rows = [json.loads(line) for line in f]
    start: float | None = None
    submits, previous = 0, ""
    for rec in rows:
        if rec["k"] == "submit":
            if previous != "submit":
                print("--- burst")
                start = rec["t0"]
            submits += 1
        elif start is not None:  # (start-up work before the first request is left out)
            if submits:
                print(f"{'':>8} {submits} submits")
                submits = 0
            extra = f" {rec['tokens']} prompt tokens" if "tokens" in rec else ""
            print(
                f"{rec['t0'] - start:8.3f} {rec['k']:7} rows {rec['n']:3d}  wall {rec['dt'] * 1e3:7.1f} ms  "
                f"engine CPU {rec['cpu'] * 1e3:6.1f} ms{extra}"
            )
        previous = rec["k"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("serve")
    p.add_argument("trace")
    p.add_argument("args", nargs=argparse.REMAINDER)
    p = sub.add_parser("drive")
    p.add_argument("url")
    p.add_argument("--clients", type=int, default=32)
    p.add_argument("--tokens", type=int, default=16)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--model", default="peer-model", help="the served model name (STEER_MODEL_NAME)")
    p = sub.add_parser("show")
    p.add_argument("trace")
    args = parser.parse_args()
    if args.cmd == "serve":
        rest = args.args[1:] if args.args[:1] == ["--"] else args.args
        sys.exit(serve(args.trace, rest))
    if args.cmd == "drive":
        drive(args.url, args.clients, args.tokens, args.rounds, args.model)
    else:
        show(args.trace)


if __name__ == "__main__":
    main()
