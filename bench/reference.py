"""The reference way to steer a decode: the full SAE round trip `vectors.steering.reference_steer` at every token.

The core offers only the exact fast path as hooks (`vectors.hooks.steering_hooks`); this hook is what the YaPO
reference code does (encode, add u in code space, ReLU, decode twice), so the benchmark can put the two side by side.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from vectors.hooks import decoder_layers
from vectors.sae import SparseCoder
from vectors.steering import reference_steer


def _apply(output: Any, fn: Any) -> Any:
    if isinstance(output, torch.Tensor):
        return fn(output)
    if isinstance(output, tuple) and output and isinstance(output[0], torch.Tensor):
        return (fn(output[0]), *output[1:])
    raise TypeError(f"unsupported decoder-layer output type {type(output).__name__}")


@contextmanager
def reference_hooks(model: nn.Module, coder: SparseCoder, u: torch.Tensor) -> Iterator[None]:
    """Steer block `coder.layer` with ``Dec(ReLU(z + u)) + (h − Dec(z))`` at every position of every forward.

    `u` is one code vector [d_sae] for every row, or one per row [B, d_sae].
    """
    code = u.to(device=coder.device, dtype=coder.dtype)
    if code.dim() == 2:
        code = code.unsqueeze(1)  # [B, 1, d_sae]: broadcast over positions

    def steer(h: torch.Tensor) -> torch.Tensor:
        return reference_steer(h, coder, code).to(h.dtype)

    handle = decoder_layers(model)[coder.layer].register_forward_hook(lambda _m, _a, out: _apply(out, steer))
    try:
        yield
    finally:
        handle.remove()
