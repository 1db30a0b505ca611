"""The four ways to make a vector: the YaPO/BiPO preference loss with its steering modules, and the
CAA/SAS mean-difference estimators.

YaPO steers the output h of block L with `Dec(ReLU(z + d·v)) + (h − Dec(z))`, z = Enc(h) ≥ 0.
Since Dec is affine, that equals `h + Lin(ReLU(z + u) − z)` with Lin(a) = Dec(a) − Dec(0): one
encode and one decode, no reconstruction error materialised, and for every feature the same value
and the same gradient `1[z + u > 0]` as the reference form (which also costs a second decode).
`mode="reference"` keeps the reference code's round trip for measurement and tests.
"""

from __future__ import annotations

import contextlib
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vectors.hooks import layer_hook

YapoMode = Literal["fast", "reference"]


def preference_margin(policy_w: Tensor, policy_l: Tensor, ref_w: Tensor, ref_l: Tensor) -> Tensor:
    """`(log π_v(y_w) − log π_0(y_w)) − (log π_v(y_l) − log π_0(y_l))` per pair."""
    return (policy_w - ref_w) - (policy_l - ref_l)


def preference_loss(margin: Tensor, direction: float, beta: float) -> Tensor:
    """Bi-directional DPO loss `−log σ(d·β·margin)`, averaged over the batch (ln 2 at margin 0)."""
    return -F.logsigmoid(direction * beta * margin).mean()


class YapoSteer(nn.Module):
    """Learned SAE-code vector v (float32, zero-init) applied as `Dec(ReLU(z + d·v)) + (h − Dec(z))`."""

    def __init__(self, coder: Any, mode: YapoMode = "fast", dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        self.coder = coder
        self.mode = mode
        self.v = nn.Parameter(torch.zeros(coder.d_sae, dtype=dtype, device=coder.W_dec.device))
        self.direction = 1.0
        self.codes: Tensor | None = None  # precomputed Enc(h) for the next forward (LowerLayerCache)

    def forward(self, h: Tensor) -> Tensor:
        coder = self.coder
        x = h.to(coder.dtype)
        u = (self.direction * self.v).to(coder.dtype)
        if self.codes is not None and self.mode == "fast":
            z = self.codes.to(coder.dtype)
        else:
            with torch.no_grad():
                z = coder.encode(x)
        if self.mode == "reference":
            with torch.no_grad():
                error = x - coder.decode(z, ref=x) if coder.normalizes else x - coder.decode(z)
            steered = F.relu(z + u)
            out = (coder.decode(steered, ref=x) if coder.normalizes else coder.decode(steered)) + error
        else:
            change = _code_change(z, u, coder.W_dec)
            scale = coder.input_scale(x)
            out = x + (change if scale is None else change * scale)
        return out.to(h.dtype)

    def vector(self) -> Tensor:
        return self.v.detach().float().cpu()


def _code_change(z: Tensor, u: Tensor, w_dec: Tensor) -> Tensor:
    """`(ReLU(z + u) − z) @ W_dec`, exact in value and in gradient w.r.t. u, touching per token only the
    features that can contribute: P = {u > 0} adds the constant `u_P @ W_dec[P]` to every token, and a
    feature with u_i ≤ 0 contributes (and gets gradient) only where z_i > 0, so only the features active
    somewhere in the batch are decoded per token."""
    const = F.relu(u) @ w_dec  # gradient 1 where u > 0, 0 at u = 0 (those are handled below), like ReLU(z+u)
    flat = z.reshape(-1, z.shape[-1])
    active = torch.nonzero(flat.gt(0).any(0) & u.le(0)).reshape(-1)
    if active.numel() == 0:
        return const.expand(*z.shape[:-1], w_dec.shape[-1])
    z_a, u_a = flat[:, active], u[active]
    delta = torch.where(z_a + u_a > 0, u_a.expand_as(z_a), -z_a)  # ReLU(z+u) − z for u ≤ 0, grad 1[z+u>0]
    return (delta @ w_dec[active] + const).reshape(*z.shape[:-1], w_dec.shape[-1])


class BipoSteer(nn.Module):
    """Learned dense vector v (float32, zero-init) added as `h + d·v`."""

    def __init__(
        self, d_model: int, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32
    ) -> None:
        super().__init__()
        self.v = nn.Parameter(torch.zeros(d_model, dtype=dtype, device=device))
        self.direction = 1.0

    def forward(self, h: Tensor) -> Tensor:
        return (h.to(self.v.dtype) + self.direction * self.v).to(h.dtype)

    def vector(self) -> Tensor:
        return self.v.detach().float().cpu()


@torch.no_grad()
def last_token_states(model: Any, batch: Any, layer: int) -> Tensor:
    """Block-`layer` output at the last token of every row of `batch` (input_ids, attention_mask,
    position_ids), unsteered, float32 [rows, d_model]."""
    store: list[Tensor] = []
    with capture_last_token(model, layer, store):
        model(
            input_ids=batch.input_ids,
            attention_mask=batch.attention_mask,
            position_ids=batch.position_ids,
            use_cache=False,
        )
    return store[0]


def capture_last_token(
    model: Any, layer: int, store: list[Tensor]
) -> contextlib.AbstractContextManager[None]:
    """Append the block-`layer` output at the last position of every row (left padding) to `store`."""

    def keep(h: Tensor) -> Tensor:
        store.append(h[:, -1, :].detach().float())
        return h

    return layer_hook(model, layer, keep)


def mean_difference(pos: Tensor, neg: Tensor) -> Tensor:
    """CAA: mean of `pos − neg` over pairs (rows are paired)."""
    if pos.shape != neg.shape or pos.ndim != 2 or pos.shape[0] == 0:
        raise ValueError(
            f"mean_difference needs two equal non-empty [N, D] tensors, got {pos.shape} {neg.shape}"
        )
    return (pos.double() - neg.double()).mean(0).float()


def threshold_relative(v: Tensor, tau: float) -> Tensor:
    """SAS threshold τ ∈ [0, 1): zero every entry with |v_i| < τ · max|v| (τ = 0 keeps all non-zeros)."""
    if not 0.0 <= tau < 1.0:
        raise ValueError(f"tau must be in [0, 1), got {tau}")
    if tau == 0.0 or not torch.any(v != 0):
        return v.clone()
    keep = v.abs() >= tau * v.abs().max()
    return torch.where(keep, v, torch.zeros_like(v))


def keep_top_k(v: Tensor, k: int | None) -> Tensor:
    """Zero all but the `k` entries of largest magnitude (None keeps everything)."""
    if k is None or k >= v.numel():
        return v.clone()
    if k <= 0:
        raise ValueError(f"top-k must be positive, got {k}")
    out = torch.zeros_like(v)
    idx = v.abs().topk(k).indices
    out[idx] = v[idx]
    return out


def soft_threshold_(v: Tensor, amount: float) -> None:
    """In-place proximal step of an L1 penalty: shrink |v| by `amount`, exact zeros below it."""
    if amount > 0:
        v.copy_(v.sign() * (v.abs() - amount).clamp(min=0))


__all__ = [
    "BipoSteer",
    "YapoMode",
    "YapoSteer",
    "capture_last_token",
    "keep_top_k",
    "mean_difference",
    "preference_loss",
    "preference_margin",
    "soft_threshold_",
    "threshold_relative",
]
