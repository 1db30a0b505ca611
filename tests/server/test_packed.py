"""Packed linear layers (`server.engine.packed`): which layers are packed, and that a packed layer computes what
`nn.Linear` computes at one row (the matrix-vector path) and at several (the oneDNN-packed path)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from server.engine import packed
from server.engine.packed import PACKED_MIN_WEIGHT, PackedLinear, can_pack, pack_linears, unpack_linears

pytestmark = pytest.mark.skipif(not torch._C._has_mkldnn, reason="oneDNN is not in this torch build")


def two_layers() -> nn.Sequential:
    """One weight just above `PACKED_MIN_WEIGHT` elements, one far below it."""
    torch.manual_seed(0)
    big = nn.Linear(1024, -(-PACKED_MIN_WEIGHT // 1024), bias=True)
    return nn.Sequential(big, nn.ReLU(), nn.Linear(big.out_features, 64, bias=False)).eval()


def test_only_weights_worth_packing_are_packed() -> None:
    model = two_layers()
    assert can_pack(model)
    assert pack_linears(model) == 1
    assert isinstance(model[0], PackedLinear) and type(model[2]) is nn.Linear
    assert pack_linears(model) == 0  # idempotent
    unpack_linears(model)
    assert type(model[0]) is nn.Linear and model[0].weight.data_ptr() not in packed._PACKED


def test_small_weights_pack_when_asked() -> None:
    model = two_layers()
    assert pack_linears(model, min_weight=0) == 2
    unpack_linears(model)


@pytest.mark.parametrize("rows", [1, packed.PACKED_MIN_ROWS, 5])
def test_a_packed_layer_computes_the_linear(rows: int) -> None:
    model = two_layers()
    x = torch.randn(rows, 1, 1024, generator=torch.Generator().manual_seed(rows))
    with torch.inference_mode():
        want = model(x)
        pack_linears(model, min_weight=0)
        got = model(x)
    unpack_linears(model)
    assert got.shape == want.shape
    assert torch.allclose(got, want, rtol=1e-4, atol=1e-5), float((got - want).abs().max())
