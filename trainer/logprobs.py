"""Batched forwards for training: summed response log-probs and layer activations at the last token.

Rows are LEFT-padded, so every response ends at the last position: the logits needed for the
response tokens are those of the `K` positions before the last (`logits_to_keep` as an index tensor:
no full-vocabulary logits over the prompt), and "the last token" is position −1 for every row.
Explicit `position_ids` make a padded row compute exactly what it would alone.

The positions are given as indices, not as a count: a count makes the model slice its hidden states,
and the lm_head then multiplies a non-contiguous view, which CPU bf16 matmuls handle by a fallback
orders of magnitude slower (it tried to allocate 37 GB at Gemma's 256k vocabulary). Indexing copies
the K rows into a contiguous tensor first.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor


@dataclass(frozen=True)
class Batch:
    """A left-padded batch of prompt+response rows with right-aligned response targets."""

    input_ids: Tensor  # [R, T]
    attention_mask: Tensor  # [R, T]
    position_ids: Tensor  # [R, T]
    targets: Tensor  # [R, K] response token ids, right-aligned
    target_mask: Tensor  # [R, K] 1 on response tokens

    def to(self, device: torch.device | str) -> Batch:
        return Batch(
            *(
                t.to(device)
                for t in (
                    self.input_ids,
                    self.attention_mask,
                    self.position_ids,
                    self.targets,
                    self.target_mask,
                )
            )
        )


def make_batch(rows: Sequence[tuple[Sequence[int], Sequence[int]]], pad_id: int = 0) -> Batch:
    """Build a left-padded batch from (prefix ids, response ids) rows; responses must be non-empty."""
    if not rows:
        raise ValueError("make_batch needs at least one row")
    width = max(len(p) + len(r) for p, r in rows)
    k = max(len(r) for _, r in rows)
    n = len(rows)
    input_ids = torch.full((n, width), pad_id, dtype=torch.long)
    mask = torch.zeros(n, width, dtype=torch.long)
    targets = torch.zeros(n, k, dtype=torch.long)
    tmask = torch.zeros(n, k, dtype=torch.long)
    for i, (prefix, response) in enumerate(rows):
        if not response:
            raise ValueError(f"row {i} has an empty response")
        seq = list(prefix) + list(response)
        input_ids[i, width - len(seq) :] = torch.tensor(seq)
        mask[i, width - len(seq) :] = 1
        targets[i, k - len(response) :] = torch.tensor(list(response))
        tmask[i, k - len(response) :] = 1
    position_ids = (mask.cumsum(-1) - 1).clamp(min=0)
    return Batch(input_ids, mask, position_ids, targets, tmask)


def _accepts_logits_to_keep(model: Any) -> bool:
    cached = getattr(model, "_steer_logits_to_keep", None)
    if cached is None:
        cached = "logits_to_keep" in inspect.signature(model.forward).parameters
        model._steer_logits_to_keep = cached
    return cached


def response_logprobs(model: Any, batch: Batch) -> Tensor:
    """Summed log-probability of each row's response tokens ([R], float32 or wider); differentiable."""
    width, k = batch.input_ids.shape[1], batch.targets.shape[1]
    scored = torch.arange(width - k - 1, width - 1, device=batch.input_ids.device)  # predict the K targets
    kwargs: dict[str, Any] = {}
    if _accepts_logits_to_keep(model):
        kwargs["logits_to_keep"] = scored
    out = model(
        input_ids=batch.input_ids,
        attention_mask=batch.attention_mask,
        position_ids=batch.position_ids,
        use_cache=False,
        **kwargs,
    )
    logits = out.logits if "logits_to_keep" in kwargs else out.logits[:, scored, :]
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))  # float32 at least; float64 kept
    logp = torch.log_softmax(logits, dim=-1).gather(-1, batch.targets.unsqueeze(-1)).squeeze(-1)
    return (logp * batch.target_mask).sum(-1)


def pair_rows(
    pairs: Sequence[Any], *, chosen_first: bool = True
) -> list[tuple[tuple[int, ...], tuple[int, ...]]]:
    """Rows [prompt+chosen for each pair] + [prompt+rejected for each pair] (one 2B-row forward)."""
    chosen = [(p.prompt, p.chosen) for p in pairs]
    rejected = [(p.prompt, p.rejected) for p in pairs]
    return chosen + rejected if chosen_first else rejected + chosen


__all__ = ["Batch", "make_batch", "pair_rows", "response_logprobs"]
