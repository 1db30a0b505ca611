"""The KV cache of the engine: K/V for `slots` rows × `max_context` positions per layer, allocated once.

Each running row owns a slot and writes its keys and values at its own positions, so rows of different lengths
share a batch without padding on the left, and a row joining or leaving copies nothing of anyone else's cache.
A forward covers consecutive slots ``[start, start + n)``; `bind` says which, at which positions, and how many
key positions attention reads (`kv_len`). Masks are 4-D and built from the positions, so no position another
occupant of the slot left behind is ever read: a query at position p sees keys 0..p (and, in a sliding-window
layer, only the last `window` of them).

It is a transformers `Cache`, so the model's own attention code (Llama, Gemma-2, Qwen2, GPT-2, ...) writes
through `update` and reads the returned views: nothing is copied per step.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from transformers.cache_utils import Cache, CacheLayerMixin


@dataclass(frozen=True)
class CacheShape:
    """What the cache holds: layers × slots × kv_heads × max_context × head_dim in `dtype`."""

    layers: int
    slots: int
    kv_heads: int
    max_context: int
    head_dim: int
    dtype: torch.dtype

    @classmethod
    def of(cls, config: Any, slots: int, max_context: int, dtype: torch.dtype) -> CacheShape:
        heads = int(config.num_attention_heads)
        kv_heads = int(getattr(config, "num_key_value_heads", None) or heads)
        head_dim = int(getattr(config, "head_dim", None) or config.hidden_size // heads)
        return cls(int(config.num_hidden_layers), slots, kv_heads, max_context, head_dim, dtype)

    @property
    def bytes(self) -> int:
        """Memory of K and V for every layer."""
        item = torch.empty((), dtype=self.dtype).element_size()
        return 2 * self.layers * self.slots * self.kv_heads * (self.max_context + 1) * self.head_dim * item


class _SlotLayer(CacheLayerMixin):
    """One layer's view of the slot cache (transformers calls `update` from inside attention)."""

    is_compileable = True

    def __init__(self, cache: SlotCache, index: int) -> None:
        super().__init__()
        self._cache = cache
        self._index = index
        self.is_initialized = True

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        return None

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        return self._cache.write(self._index, key_states, value_states)

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self._cache.kv_len, 0

    def get_seq_length(self) -> int:
        return self._cache.kv_len

    def get_max_length(self) -> int:
        return self._cache.shape.max_context


class SlotCache(Cache):
    """Preallocated per-slot K/V; `bind` before each forward, `move` to compact, nothing else ever copies."""

    def __init__(self, shape: CacheShape, device: torch.device) -> None:
        super().__init__(layers=[_SlotLayer(self, i) for i in range(shape.layers)])
        self.shape = shape
        # One spare position: a step never reads the whole buffer, so a compiled graph whose key count is dynamic
        # is not specialised (and recompiled) for the step that reads all `max_context` keys.
        size = (shape.slots, shape.kv_heads, shape.max_context + 1, shape.head_dim)
        self.keys = [torch.zeros(size, dtype=shape.dtype, device=device) for _ in range(shape.layers)]
        self.values = [torch.zeros(size, dtype=shape.dtype, device=device) for _ in range(shape.layers)]
        self.start = 0
        self.kv_len = 0
        self.positions = torch.zeros(1, 1, dtype=torch.long, device=device)
        # index tensors of `write`: slot ids [slots, 1, 1] and kv head ids [1, kv_heads, 1]
        self.slot_ids = torch.arange(shape.slots, device=device).view(-1, 1, 1)
        self.head_ids = torch.arange(shape.kv_heads, device=device).view(1, -1, 1)

    def buffers(self) -> list[torch.Tensor]:
        return self.keys + self.values

    def bind(self, start: int, positions: torch.Tensor, kv_len: int) -> None:
        """The next forward covers slots [start, start + n) at `positions` [n, q], reading `kv_len` keys."""
        if not 0 < kv_len <= self.shape.max_context:
            raise ValueError(f"kv_len {kv_len} outside (0, {self.shape.max_context}]")
        self.start, self.positions, self.kv_len = start, positions, kv_len

    def write(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Put the new keys/values [n, H, q, D] at each row's positions; the views attention reads.

        One `index_put_` on the whole layer buffer (slot, head, position → a D-vector): a compiled step turns it
        into an in-place write of the new entries. A `scatter_` into the rows' slice, as before, is not one
        inductor writes in place: it copied every bound slot's K and V (all `max_context` positions) and back,
        per layer and step.
        """
        n, heads, _q, dim = k.shape
        if (heads, dim) != (self.shape.kv_heads, self.shape.head_dim):
            raise ValueError(
                f"layer {layer}: attention gives {heads} kv heads × {dim}, the cache holds "
                f"{self.shape.kv_heads} × {self.shape.head_dim}"
            )
        index = (self.slot_ids[self.start : self.start + n], self.head_ids, self.positions[:, None, :])
        keys, values = self.keys[layer], self.values[layer]
        keys.index_put_(index, k.to(keys.dtype))
        values.index_put_(index, v.to(values.dtype))
        rows = slice(self.start, self.start + n)
        return keys[rows, :, : self.kv_len], values[rows, :, : self.kv_len]

    def move(self, src: int, dst: int) -> None:
        """Copy one slot's K/V into another (compaction: at most one slot moves when a row leaves)."""
        for t in self.buffers():
            t[dst].copy_(t[src])


def attention_masks(
    positions: torch.Tensor, kv_len: int, dtype: torch.dtype, sliding_window: int | None
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Additive 4-D masks [n, 1, q, kv_len] for queries at `positions` [n, q]: full, and sliding-window (or None)."""
    keys = torch.arange(kv_len, device=positions.device)[None, None, :]
    pos = positions[:, :, None]
    allowed = keys <= pos
    low = torch.finfo(dtype).min

    def additive(ok: torch.Tensor) -> torch.Tensor:
        zero = torch.zeros((), dtype=dtype, device=positions.device)
        return torch.where(ok, zero, torch.full((), low, dtype=dtype, device=positions.device))[:, None]

    full = additive(allowed)
    if sliding_window is None:
        return full, None
    return full, additive(allowed & (keys > pos - sliding_window))
