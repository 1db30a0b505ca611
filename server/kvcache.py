"""Batch surgery on a key/value cache: keep some rows, join two batches, drop all-padding columns.

Rows are left-padded: every row's real tokens end at the last column, padding columns are 0 in the attention
mask and hold zeros in the cache. Rotary positions are applied before caching, so moving a row's columns to
the right (more left padding) leaves its keys valid as long as `position_ids` are tracked per row.
"""

from __future__ import annotations

import torch
from transformers import DynamicCache


def _layers(cache: DynamicCache) -> list[tuple[torch.Tensor, torch.Tensor]]:
    out = []
    for layer in cache.layers:
        if getattr(layer, "is_sliding", False):
            raise NotImplementedError("sliding-window cache layers are not supported by the batch engine")
        out.append((layer.keys, layer.values))
    return out


def select_rows(
    cache: DynamicCache, mask: torch.Tensor, rows: torch.Tensor
) -> tuple[DynamicCache, torch.Tensor]:
    """Keep `rows` (1-D index tensor) and drop the leading columns that are padding in every kept row."""
    mask = mask.index_select(0, rows)
    start = _first_used_column(mask)
    kv = [
        (k.index_select(0, rows)[:, :, start:], v.index_select(0, rows)[:, :, start:])
        for k, v in _layers(cache)
    ]
    return DynamicCache(kv), mask[:, start:]


def concat(
    a: DynamicCache, mask_a: torch.Tensor, b: DynamicCache, mask_b: torch.Tensor
) -> tuple[DynamicCache, torch.Tensor]:
    """Stack batch `b` under batch `a`, left-padding the shorter one."""
    len_a, len_b = mask_a.shape[1], mask_b.shape[1]
    width = max(len_a, len_b)
    kv = []
    for (ka, va), (kb, vb) in zip(_layers(a), _layers(b), strict=True):
        kv.append(
            (
                torch.cat([_pad_left(ka, width), _pad_left(kb, width)], dim=0),
                torch.cat([_pad_left(va, width), _pad_left(vb, width)], dim=0),
            )
        )
    mask = torch.cat([_pad_mask(mask_a, width), _pad_mask(mask_b, width)], dim=0)
    return DynamicCache(kv), mask


def _first_used_column(mask: torch.Tensor) -> int:
    used = mask.any(dim=0).nonzero()
    return int(used[0]) if used.numel() else mask.shape[1]


def _pad_left(t: torch.Tensor, width: int) -> torch.Tensor:
    missing = width - t.shape[2]
    if missing == 0:
        return t
    pad = t.new_zeros((t.shape[0], t.shape[1], missing, t.shape[3]))
    return torch.cat([pad, t], dim=2)


def _pad_mask(mask: torch.Tensor, width: int) -> torch.Tensor:
    missing = width - mask.shape[1]
    if missing == 0:
        return mask
    return torch.cat([mask.new_zeros((mask.shape[0], missing)), mask], dim=1)
