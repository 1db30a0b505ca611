"""The reference way to steer a decode: the full SAE round trip `vectors.steering.reference_steer` at every token.

The core offers only the exact fast path (`vectors.slots`); this hook is what the YaPO
reference code does (encode, add u in code space, ReLU, decode twice), so the benchmark can put the two side by side.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

from vectors.hooks import layer_hook
from vectors.sae import SparseCoder
from vectors.steering import reference_steer


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

    with layer_hook(model, coder.layer, steer):
        yield
