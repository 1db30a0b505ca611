"""Per-row token choice: greedy, or temperature / top-k / top-p sampling with the row's own generator."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class SamplingParams:
    """How one row picks its tokens and when it stops (`max_new_tokens` 0: score the prompt, sample nothing)."""

    max_new_tokens: int
    temperature: float = 0.0  # 0 = greedy
    top_p: float = 1.0
    top_k: int = 0  # 0 = off
    seed: int | None = None
    stop: tuple[str, ...] = ()
    logprobs: int | None = None  # top alternatives per generated token; None = no log-probs
    prompt_logprobs: int | None = None  # echo: log-probs of the prompt tokens themselves (top alternatives)

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0

    def generator(self) -> torch.Generator | None:
        """A CPU generator seeded for this row (None for greedy rows)."""
        if self.greedy:
            return None
        gen = torch.Generator(device="cpu")
        if self.seed is None:
            gen.seed()
        else:
            gen.manual_seed(self.seed)
        return gen


def sample_rows(
    logits: torch.Tensor, params: list[SamplingParams], generators: list[torch.Generator | None]
) -> list[int]:
    """Next token of every row from its last-position logits [B, V]."""
    greedy = logits.argmax(dim=-1).tolist()
    out = []
    for row, (p, gen) in enumerate(zip(params, generators, strict=True)):
        out.append(greedy[row] if p.greedy else _sample(logits[row], p, gen))
    return out


def _sample(logits: torch.Tensor, p: SamplingParams, gen: torch.Generator | None) -> int:
    # Sampling happens on CPU in float64 so that a seed gives the same draw on every device.
    # Shift so the best score is 0 first: a tiny temperature (say 1e-300) then sends the others to -inf
    # instead of overflowing every score to inf (softmax NaN, multinomial error).
    scores = logits.detach().to("cpu", torch.float64)
    scores = (scores - scores.max()) / p.temperature
    if p.top_k > 0 and p.top_k < scores.shape[0]:
        kth = torch.topk(scores, p.top_k).values[-1]
        scores = scores.masked_fill(scores < kth, float("-inf"))
    if p.top_p < 1.0:
        order = torch.argsort(scores, descending=True)
        probs = torch.softmax(scores[order], dim=-1)
        # Drop a token when the tokens ranked above it already reach top_p (the top token always stays).
        drop = (torch.cumsum(probs, dim=-1) - probs) >= p.top_p
        scores[order[drop]] = float("-inf")
    probs = torch.softmax(scores, dim=-1)
    return int(torch.multinomial(probs, 1, generator=gen))
