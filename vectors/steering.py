"""The steering math (DESIGN.md §3). Pure tensor functions: no I/O, no hooks.

Reference (YaPO): ``h' = Dec(ReLU(z + u)) + (h − Dec(z))`` with ``z = z(h) ≥ 0`` and ``u = Σ strength·v``.
Because z ≥ 0, per feature ``ReLU(z_i + u_i) − z_i`` is ``u_i`` when ``u_i ≥ 0`` and ``max(−z_i, u_i)``
otherwise, so exactly

    h' = h + s(h)·( W_decᵀ u⁺ + W_dec[N]ᵀ max(−z_N(h), u_N) ),   N = {i : u_i < 0},

where s(h) = 1 unless the SAE normalises its input (see `SparseCoder.input_scale`). The first term is a
constant per (vector, strength); the second needs the encoder only on the columns in N. For TopK SAEs z_N
depends on every feature, so `fast_steer` computes the full encode there (still exact).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch

from vectors.sae import SparseCoder
from vectors.vector import SteeringVector


def reference_steer(h: torch.Tensor, coder: SparseCoder, u: torch.Tensor) -> torch.Tensor:
    """The full round trip ``Dec(ReLU(z + u)) + (h − Dec(z))`` (the definition; slow; tests compare to it)."""
    z = coder.encode(h)
    steered = coder.decode(torch.relu(z + u.to(z)), ref=h)
    return steered + (h.to(coder.dtype) - coder.decode(z, ref=h))


@dataclass(frozen=True)
class SparsePlan:
    """What `fast_steer` needs for one code-space vector u: the constant part and the negative support."""

    delta: torch.Tensor  # [d_model] = W_decᵀ u⁺
    neg_idx: torch.Tensor  # [K] int64, features with u_i < 0 (sorted)
    neg_val: torch.Tensor  # [K] u_i on those features

    @property
    def is_identity(self) -> bool:
        """True when u = 0 (then steering must return h unchanged, bit for bit)."""
        return self.neg_idx.numel() == 0 and not bool(self.delta.any())


def plan_for(coder: SparseCoder, u: torch.Tensor) -> SparsePlan:
    """Split code-space vector u [d_sae] into the constant dense delta and its negative support."""
    if u.shape != (coder.d_sae,):
        raise ValueError(f"code vector must have shape [{coder.d_sae}], got {list(u.shape)}")
    u = u.to(device=coder.device, dtype=coder.dtype)
    pos = torch.nonzero(u > 0).reshape(-1)
    neg = torch.nonzero(u < 0).reshape(-1)
    delta = u[pos] @ coder.W_dec[pos] if pos.numel() else torch.zeros_like(coder.b_dec)
    return SparsePlan(delta=delta, neg_idx=neg, neg_val=u[neg])


def negative_term(h: torch.Tensor, coder: SparseCoder, idx: torch.Tensor, val: torch.Tensor) -> torch.Tensor:
    """``W_dec[N]ᵀ max(−z_N(h), u_N)`` for features `idx` with values `val` (without the scale s(h))."""
    z_n = coder.encode_subset(h, idx) if coder.elementwise else coder.encode(h)[..., idx]
    return torch.maximum(-z_n, val.to(z_n)) @ coder.W_dec[idx]


def fast_steer(h: torch.Tensor, coder: SparseCoder, plan: SparsePlan) -> torch.Tensor:
    """The exact fast form of `reference_steer` (returns `h` itself when the plan is the identity)."""
    if plan.is_identity:
        return h
    code_delta = plan.delta.to(coder.dtype)
    if plan.neg_idx.numel():
        code_delta = code_delta + negative_term(h, coder, plan.neg_idx, plan.neg_val)
    scale = coder.input_scale(h)
    if scale is not None:
        code_delta = code_delta * scale
    return (h.to(coder.dtype) + code_delta).to(h.dtype)


def dense_steer(h: torch.Tensor, vector: torch.Tensor, strength: float = 1.0) -> torch.Tensor:
    """Dense steering ``h + strength·v`` (returns `h` itself at strength 0)."""
    if strength == 0:
        return h
    return h + (strength * vector.to(h))


def code_space_sum(
    pairs: Iterable[tuple[SteeringVector, float]], d_sae: int, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """Composition: u = Σ strength_j · v_j in code space (SAE-space vectors of one SAE)."""
    u = torch.zeros(d_sae, dtype=torch.float64)
    for vector, strength in pairs:
        if strength == 0:
            continue
        if vector.space != "sae":
            raise ValueError(f"{vector.name} is a dense vector; code_space_sum takes SAE-space vectors")
        assert vector.indices is not None and vector.values is not None
        if vector.meta.sae is not None and vector.meta.sae.d_sae != d_sae:
            raise ValueError(f"{vector.name} is for d_sae={vector.meta.sae.d_sae}, not {d_sae}")
        u.index_add_(0, vector.indices, vector.values.to(torch.float64) * float(strength))
    return u.to(dtype)


def dense_sum(
    pairs: Iterable[tuple[SteeringVector, float]], d_model: int, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """Composition of dense vectors: Σ strength_j · v_j in the residual stream."""
    out = torch.zeros(d_model, dtype=torch.float64)
    for vector, strength in pairs:
        if strength == 0:
            continue
        if vector.space != "dense" or vector.dense is None:
            raise ValueError(f"{vector.name} is an SAE-space vector; dense_sum takes dense vectors")
        if vector.dense.shape[0] != d_model:
            raise ValueError(f"{vector.name} has d_model={vector.dense.shape[0]}, not {d_model}")
        out += vector.dense.to(torch.float64) * float(strength)
    return out.to(dtype)
