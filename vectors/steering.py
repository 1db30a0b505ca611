"""The steering math by its definition (DESIGN.md §3): the oracle the fast path is tested against.

YaPO: ``h' = Dec(ReLU(z + u)) + (h − Dec(z))`` with ``z = z(h) ≥ 0`` and ``u = Σ strength·v``. Because z ≥ 0,
per feature ``ReLU(z_i + u_i) − z_i`` is ``u_i`` when ``u_i ≥ 0`` and ``max(−z_i, u_i)`` otherwise, so exactly

    h' = h + s(h)·( W_decᵀ u⁺ + W_dec[N]ᵀ max(−z_N(h), u_N) ),   N = {i : u_i < 0},

where s(h) = 1 unless the SAE normalises its input (see `SparseCoder.input_scale`). That fast form is
`vectors.slots` (used by the server and by `steer eval`); this module keeps only the full round trip.
"""

from __future__ import annotations

import torch

from vectors.sae import SparseCoder


def reference_steer(h: torch.Tensor, coder: SparseCoder, u: torch.Tensor) -> torch.Tensor:
    """The full round trip ``Dec(ReLU(z + u)) + (h − Dec(z))`` (the definition; slow; tests compare to it)."""
    z = coder.encode(h)
    steered = coder.decode(torch.relu(z + u.to(z)), ref=h)
    return steered + (h.to(coder.dtype) - coder.decode(z, ref=h))
