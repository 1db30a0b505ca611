"""What the lm_head input costs on the Gemma-2-2B-it shape at its real 256k vocabulary, on this CPU.

    python -m bench.lm_head [--vocab 256000] [--reps 2]

1. Training (`trainer.logprobs.response_logprobs`, bf16, forward + backward through a steering vector at
   layer 1, 8 rows): the response positions given to `logits_to_keep` as a count (the model slices its
   hidden states, the lm_head gets a non-contiguous view) vs as indices (a contiguous copy: what the trainer
   does). Interleaved, median of `--reps`.
2. Option scoring (`vectors.scoring`, float32, 64 rows of 20 tokens): peak RSS over the loaded model with
   full-vocabulary logits at every position vs only the suffix-predicting positions (what it does).
Not a test: it takes minutes at the real vocabulary. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import statistics
import threading
import time
from collections.abc import Callable
from typing import Any

import psutil
import torch

from bench.gemma_shape import GEMMA_WIDTH, gemma_config


def _model(vocab: int, dtype: torch.dtype) -> Any:
    from transformers import Gemma2Config, Gemma2ForCausalLM

    torch.manual_seed(0)
    return Gemma2ForCausalLM(Gemma2Config(**gemma_config(vocab))).to(dtype).eval().requires_grad_(False)


def _peak_rss_mib(fn: Callable[[], Any]) -> float:
    proc = psutil.Process()
    base = peak = proc.memory_info().rss
    done = threading.Event()

    def watch() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, proc.memory_info().rss)
            time.sleep(0.002)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        fn()
    finally:
        done.set()
        watcher.join()
    return (peak - base) / 2**20


def training(vocab: int, reps: int) -> dict[str, float]:
    from trainer.logprobs import make_batch, response_logprobs

    model = _model(vocab, torch.bfloat16)
    v = torch.zeros(GEMMA_WIDTH, dtype=torch.bfloat16, requires_grad=True)
    model.model.layers[1].register_forward_hook(
        lambda _m, _i, o: (o[0] + v, *o[1:]) if isinstance(o, tuple) else o + v
    )
    rows = [(list(range(10, 24 + i % 3)), list(range(200, 203 + i % 4))) for i in range(8)]
    batch = make_batch(rows)
    k = batch.targets.shape[1]

    def by_count() -> None:  # the trainer before: logits_to_keep=K+1, then drop the last position
        out = model(
            input_ids=batch.input_ids,
            attention_mask=batch.attention_mask,
            position_ids=batch.position_ids,
            use_cache=False,
            logits_to_keep=k + 1,
        )
        logp = torch.log_softmax(out.logits[:, -(k + 1) : -1].float(), -1)
        (logp.gather(-1, batch.targets[..., None]).squeeze(-1) * batch.target_mask).sum().backward()

    def by_index() -> None:
        response_logprobs(model, batch).sum().backward()

    times: dict[str, list[float]] = {"count": [], "index": []}
    for _ in range(reps):
        for name, fn in (("count", by_count), ("index", by_index)):
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    count, index = statistics.median(times["count"]), statistics.median(times["index"])
    return {"count_s": round(count, 3), "index_s": round(index, 3), "speedup": round(count / index, 1)}


def scoring(vocab: int) -> dict[str, float]:
    from vectors.scoring import _score_rows

    model = _model(vocab, torch.float32)
    rows = [([2, *range(10, 26)], list(range(200, 203))) for _ in range(64)]
    ids = torch.tensor([p + s for p, s in rows])

    @torch.no_grad()
    def full() -> None:  # before: every position's logits, then log_softmax over all of them
        torch.log_softmax(model(input_ids=ids).logits.float(), dim=-1)

    full()
    _score_rows(model, rows[:1])
    return {
        "full_mib": round(_peak_rss_mib(full)),
        "suffix_mib": round(_peak_rss_mib(lambda: _score_rows(model, rows))),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vocab", type=int, default=256000)
    parser.add_argument("--reps", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(1)
    result = {"vocab": args.vocab, "threads": 1, "training_bf16": training(args.vocab, args.reps)}
    result["scoring_fp32"] = scoring(args.vocab)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
