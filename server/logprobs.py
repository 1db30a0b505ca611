"""Log-probabilities of tokens under the (steered) model: float32 log-softmax of the raw logits.

Raw means before temperature, top-k and top-p (what OpenAI's `logprobs` and lm-eval's scoring read). Each
function makes one device→host copy.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class TokenLogprob:
    """One token's log-prob and the `top` most likely alternatives at its position (token, log-prob)."""

    token: int
    logprob: float
    top: tuple[tuple[int, float], ...] = ()


def token_logprobs(logits: torch.Tensor, tokens: torch.Tensor, top: int) -> list[TokenLogprob]:
    """For logits [n, V] and the chosen `tokens` [n]: each row's log-prob and its `top` alternatives."""
    logp = torch.log_softmax(logits.float(), dim=-1)
    chosen = logp.gather(1, tokens.view(-1, 1)).squeeze(1)
    k = min(max(top, 0), logp.shape[-1])
    best = torch.topk(logp, k, dim=-1) if k else None
    host = torch.cat(
        [chosen[:, None]] + ([best.values, best.indices.to(logp.dtype)] if best is not None else []), dim=1
    ).tolist()
    ids = tokens.tolist()
    out = []
    for row, values in enumerate(host):
        alts = tuple((int(values[1 + k + j]), float(values[1 + j])) for j in range(k))
        out.append(TokenLogprob(int(ids[row]), float(values[0]), alts))
    return out


def prompt_logprobs(logits: torch.Tensor, ids: list[int], top: int) -> list[TokenLogprob | None]:
    """Log-probs of prompt tokens `ids` from the logits [T, V] of the positions before them (first: None)."""
    if len(ids) < 2:
        return [None] * len(ids)
    targets = torch.tensor(ids[1:], dtype=torch.long, device=logits.device)
    return [None, *token_logprobs(logits[: len(ids) - 1], targets, top)]
