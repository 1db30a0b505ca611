"""Linear layers on oneDNN-packed weights (CPU, float32): the matrix products that are ~90 % of a decode step.

torch's `F.linear` on CPU calls MKL's sgemm, which on AMD EPYC runs well behind oneDNN on a weight reordered once
into its blocked layout: a Gemma 3 270M decode step at 32 rows was 1.47× faster packed (docs/BENCHMARKS.md), and
on a large weight MKL took 2–3× its one-row time for 2 or 3 rows, where the packed product took about its one-row
time (what a compiled batch-1 step runs: a lone row beside a free slot).
A single row is a matrix-vector product that MKL does as fast or faster, so it goes to `F.linear`. A packed call
costs a fixed ~50 µs (oneDNN's primitive, this op's dispatch), so only weights of `PACKED_MIN_WEIGHT` elements or
more are packed: a small model (the culture world, 96–128 wide) keeps stock layers, which a compiled graph calls
as plain library products. `pack_linears` swaps each such `nn.Linear` of a model for a `PackedLinear` that keeps
the original weight (tied embeddings still read it) and multiplies by its packed copy. The packed tensor is opaque
to the compiler, so it sits in a table outside the graph, found by the address of the original weight, and the
product is a custom op (`steer::packed_linear`) on that weight: the compiled decode step calls it like any library
kernel, and its graph holds nothing specific to these weights (a graph cached for other weights of the same shapes
still serves). A packed copy lives as long as its weight.
"""

from __future__ import annotations

import weakref
from typing import Any

import torch
from torch import nn

# One row is a matrix-vector product: MKL was as fast or faster (6 % at one row of a Gemma 3 step).
PACKED_MIN_ROWS = 2
# Elements of the smallest weight worth packing: below it the packed call's fixed cost outweighs its gain. A 128 → 1024
# weight (131,072, the largest of the culture world's shapes) was 5–25 % slower packed alone at 4–32 rows; a Gemma 3
# step at 32 rows was 8 % slower (rounds 0–9 %) with its smallest (640 → 256, 163,840) left unpacked.
PACKED_MIN_WEIGHT = 160_000
_PACKED: dict[int, torch.Tensor] = {}  # data_ptr of a weight [out, in] -> its oneDNN-packed copy


def _pack(weight: torch.Tensor) -> None:
    key = weight.data_ptr()
    if key not in _PACKED:
        _PACKED[key] = torch.ops.mkldnn._reorder_linear_weight(weight.detach(), None)
        weakref.finalize(weight, _PACKED.pop, key, None)


@torch.library.custom_op("steer::packed_linear", mutates_args=())
def packed_linear(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """x @ weightᵀ through the packed copy of `weight` (`F.linear` if it has none)."""
    packed = _PACKED.get(weight.data_ptr())
    rows = x.numel() // max(1, x.shape[-1])
    if packed is None or tuple(packed.shape) != tuple(weight.shape) or rows < PACKED_MIN_ROWS:
        return torch.nn.functional.linear(x, weight)
    out: torch.Tensor = torch.ops.mkldnn._linear_pointwise(x, packed, None, "none", [], "")
    return out


@packed_linear.register_fake
def _(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    return x.new_empty((*x.shape[:-1], weight.shape[0]))


def _setup(ctx: Any, inputs: tuple[torch.Tensor, torch.Tensor], output: torch.Tensor) -> None:
    ctx.save_for_backward(inputs[1])


def _backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
    """Gradients flow to the input only (steering vectors train through a frozen model): a packed copy would go
    stale if its weight trained, so that is refused."""
    if ctx.needs_input_grad[1]:
        raise RuntimeError("a packed linear layer's weight cannot train; unpack_linears(model) first")
    (weight,) = ctx.saved_tensors
    return grad @ weight, None


packed_linear.register_autograd(_backward, setup_context=_setup)


class PackedLinear(nn.Module):
    """An `nn.Linear` whose product runs on a oneDNN-packed copy of its weight (same parameters, same result up to
    float rounding)."""

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        self.linear = [linear]  # the original module (a list: not a child), for `unpack_linears`
        self.weight = linear.weight
        self.bias = linear.bias
        self.in_features, self.out_features = linear.in_features, linear.out_features
        _pack(linear.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y: torch.Tensor = packed_linear(x, self.weight)
        return y if self.bias is None else y + self.bias


def can_pack(model: Any) -> bool:
    """Packing applies to float32 models on CPU with oneDNN available."""
    param = next(model.parameters())
    return bool(torch._C._has_mkldnn and param.device.type == "cpu" and param.dtype == torch.float32)


def pack_linears(model: nn.Module, min_weight: int | None = None) -> int:
    """Swap every `nn.Linear` of `model` whose weight has at least `min_weight` elements (default
    `PACKED_MIN_WEIGHT`) for a `PackedLinear` (idempotent); how many were swapped."""
    least = PACKED_MIN_WEIGHT if min_weight is None else min_weight
    swaps = [
        (parent, name, child)
        for parent in model.modules()
        for name, child in parent.named_children()
        if type(child) is nn.Linear and child.weight.numel() >= least
    ]
    for parent, name, child in swaps:
        setattr(parent, name, PackedLinear(child))
    return len(swaps)


def unpack_linears(model: nn.Module) -> None:
    """Put the original `nn.Linear`s back (e.g. in a copy that should run as stock transformers)."""
    swaps = [
        (parent, name, child)
        for parent in model.modules()
        for name, child in parent.named_children()
        if isinstance(child, PackedLinear)
    ]
    for parent, name, child in swaps:
        setattr(parent, name, child.linear[0])
        _PACKED.pop(child.weight.data_ptr(), None)
