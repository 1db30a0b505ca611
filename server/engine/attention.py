"""Decode attention without `repeat_kv`: a one-token query attends on the key/value heads themselves.

With grouped-query attention (Gemma 3 270M: 4 query heads on 1 key/value head) transformers' SDPA path copies
every key and value once per query head of its group (`repeat_kv`) before the kernel, except in an eager
one-token step, where it folds a group's query heads into the query length instead (`pack_gqa`). Under
`torch.compile` it takes the copying path, and in the compiled decode step those copies were K and V of every
bound slot, all keys read, times the group size, per layer and step. `grouped_sdpa` folds the heads whenever the
query is one token, compiled or not (the eager step computes what it computed before); longer queries (prefill)
and anything else go to transformers' own function unchanged.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

NAME = "steer_sdpa"  # the attention implementation's registered name


def grouped_sdpa(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """transformers' SDPA attention, with a one-token query's head groups folded into its length."""
    from transformers.integrations.sdpa_attention import pack_gqa, sdpa_attention_forward

    groups = int(getattr(module, "num_key_value_groups", 1))
    plain = kwargs.get("softcap") is None and kwargs.get("position_bias") is None
    if query.shape[2] != 1 or groups <= 1 or not plain:
        return sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs
        )
    batch, heads, _, dim = query.shape
    packed = query.reshape(batch, heads // groups, groups, dim)  # as pack_gqa: [batch, kv heads, group, dim]
    out = F.scaled_dot_product_attention(
        packed,
        key,
        value,
        attn_mask=pack_gqa(attention_mask, groups),  # a mask shared by the heads stays as it is
        dropout_p=dropout,
        scale=scaling,
    )
    return out.reshape(batch, heads, 1, value.shape[-1]).transpose(1, 2).contiguous(), None


def use_grouped_sdpa(model: Any) -> bool:
    """Switch a model that runs transformers' SDPA attention to `grouped_sdpa` (True if it did)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    if getattr(model.config, "_attn_implementation", None) != "sdpa":
        return False
    AttentionInterface.register(NAME, grouped_sdpa)
    # the masks SDPA gets: transformers builds none for an implementation without a mask function (it takes it
    # for an engine that masks by itself), which drops Gemma 3's sliding window in a prefill past the window
    AttentionMaskInterface.register(NAME, sdpa_mask)
    model.set_attn_implementation(NAME)
    return True


def use_stock_sdpa(model: Any) -> None:
    """Undo `use_grouped_sdpa` (the model back on transformers' own SDPA function)."""
    if getattr(model.config, "_attn_implementation", None) == NAME:
        model.set_attn_implementation("sdpa")
