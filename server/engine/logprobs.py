"""Token log-probabilities from the engine's logits: each chosen token's log-prob and its top alternatives.

Log-probs are those of the raw model (float32 `log_softmax` of the logits, before temperature, top-k or top-p), of
the steered model when the row is steered (they come out of the same forward). Each function does its tensor work
on the logits' device and copies to the host once.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class TokenLogprob:
    """One token's log-prob and the `top` most likely tokens at its position, best first: (token id, log-prob)."""

    token: int
    logprob: float
    top: tuple[tuple[int, float], ...]


def chosen_logprobs(
    logits: torch.Tensor, chosen: torch.Tensor, top: Sequence[int | None]
) -> list[TokenLogprob | None]:
    """For logits [B, V] and chosen ids [B]: each row's chosen log-prob and its `top[row]` alternatives.

    A row whose `top` is None gets None (it did not ask for log-probs).
    """
    if logits.dim() != 2 or chosen.shape != (logits.shape[0],) or len(top) != logits.shape[0]:
        raise ValueError(f"logits [B, V], chosen [B] and one `top` per row; got {tuple(logits.shape)}")
    k = max((t for t in top if t is not None), default=0)
    logp = torch.log_softmax(logits.float(), dim=-1)
    picked = logp.gather(1, chosen.to(logp.device, torch.long)[:, None])
    parts = [picked.double()]
    if k > 0:
        values, ids = torch.topk(logp, min(k, logp.shape[1]), dim=-1)
        parts += [values.double(), ids.double()]  # float64 holds every token id exactly
    host = torch.cat(parts, dim=1).cpu()  # the one device → host copy
    width = (host.shape[1] - 1) // 2
    out: list[TokenLogprob | None] = []
    for row, want in enumerate(top):
        if want is None:
            out.append(None)
            continue
        top_values = host[row, 1 : 1 + want].tolist()
        top_ids = host[row, 1 + width : 1 + width + want].tolist()
        alternatives = tuple((int(i), float(v)) for i, v in zip(top_ids, top_values, strict=True))
        out.append(TokenLogprob(int(chosen[row]), float(host[row, 0]), alternatives))
    return out


def prompt_logprobs(logits: torch.Tensor, ids: Sequence[int], top: int) -> list[TokenLogprob | None]:
    """Log-probs of a prompt's own tokens from its logits block [T, V] (row t predicts token t + 1).

    The first token has nothing to condition on: None. `logits` may be longer than the prompt's T - 1 predicting
    positions only at the end (the last position predicts the first generated token and is not used here).
    """
    if len(ids) < 2:
        return [None] * len(ids)
    if logits.dim() != 2 or logits.shape[0] < len(ids) - 1:
        raise ValueError(
            f"need logits [>= {len(ids) - 1}, V] for {len(ids)} prompt tokens, got {logits.shape}"
        )
    block = logits[: len(ids) - 1]
    targets = torch.tensor(list(ids[1:]), dtype=torch.long, device=logits.device)
    return [None, *chosen_logprobs(block, targets, [top] * (len(ids) - 1))]
