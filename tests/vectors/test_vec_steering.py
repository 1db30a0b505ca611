"""The steering math: the fast form equals the YaPO reference exactly (float64) for every SAE variant."""

from __future__ import annotations

import pytest
import torch
from vectors_testkit import SAE_VARIANTS, random_code, sae_meta

from vectors.sae import SparseCoder
from vectors.steering import (
    code_space_sum,
    dense_steer,
    fast_steer,
    plan_for,
    reference_steer,
)
from vectors.vector import SteeringVector

STRENGTHS = [-2.0, -0.5, 0.3, 1.0, 1.5, 3.0]


def _h(d_model: int, seed: int = 0) -> torch.Tensor:
    return 1.5 * torch.randn(
        6, 7, d_model, dtype=torch.float64, generator=torch.Generator().manual_seed(seed)
    )


@pytest.mark.parametrize("variant", sorted(SAE_VARIANTS))
def test_fast_equals_reference(variant: str, coders64: dict[str, SparseCoder]) -> None:
    coder = coders64[variant]
    h = _h(coder.d_model)
    z = coder.encode(h)
    v = random_code(coder.d_sae, 24, seed=3)
    clipped = free = 0
    for s in STRENGTHS:
        u = s * v
        plan = plan_for(coder, u)
        assert plan.neg_idx.numel() > 0
        fast = fast_steer(h, coder, plan)
        ref = reference_steer(h, coder, u)
        assert (ref - h).abs().max() > 1e-2  # the vector really acts
        torch.testing.assert_close(fast, ref, atol=1e-9, rtol=0)
        z_n = z[..., plan.neg_idx]
        clipped += int((-z_n > plan.neg_val).sum())  # max picks −z (feature switched off)
        free += int(((z_n > 0) & (-z_n < plan.neg_val)).sum())  # max picks u (feature reduced)
    assert clipped > 0 and free > 0  # both branches of the negative term were exercised


@pytest.mark.parametrize("variant", sorted(SAE_VARIANTS))
def test_strength_zero_is_exact_identity(variant: str, coders64: dict[str, SparseCoder]) -> None:
    coder = coders64[variant]
    h = _h(coder.d_model, seed=1)
    for u in (torch.zeros(coder.d_sae, dtype=torch.float64), 0.0 * random_code(coder.d_sae, 10, seed=4)):
        assert torch.equal(fast_steer(h, coder, plan_for(coder, u)), h)
    assert torch.equal(dense_steer(h, torch.ones(coder.d_model, dtype=torch.float64), 0.0), h)


@pytest.mark.parametrize("variant", sorted(SAE_VARIANTS))
def test_positive_vector_is_its_dense_equivalent(variant: str, coders64: dict[str, SparseCoder]) -> None:
    coder = coders64[variant]
    h = _h(coder.d_model, seed=2)
    u = random_code(coder.d_sae, 12, seed=5, sign="positive")
    dense = u @ coder.W_dec
    ref = reference_steer(h, coder, u)
    scale = coder.input_scale(h)
    expected = dense_steer(h, dense) if scale is None else h + scale * dense
    torch.testing.assert_close(ref, expected, atol=1e-9, rtol=0)
    torch.testing.assert_close(fast_steer(h, coder, plan_for(coder, u)), expected, atol=1e-9, rtol=0)


@pytest.mark.parametrize("variant", ["standard", "jumprelu", "topk", "jumprelu_layernorm"])
def test_composition_adds_in_code_space(variant: str, coders64: dict[str, SparseCoder]) -> None:
    coder = coders64[variant]
    meta = sae_meta(d_sae=coder.d_sae)
    a = SteeringVector.from_code(meta, random_code(coder.d_sae, 16, seed=6))
    b = SteeringVector.from_code(
        meta.model_copy(update={"name": "test/b"}), random_code(coder.d_sae, 16, seed=7)
    )
    u = code_space_sum([(a, 1.5), (b, -0.7)], coder.d_sae, dtype=torch.float64)
    expected_u = 1.5 * a.code_vector().double() - 0.7 * b.code_vector().double()
    torch.testing.assert_close(u, expected_u, atol=1e-12, rtol=0)
    h = _h(coder.d_model, seed=3)
    ref = reference_steer(h, coder, u)
    torch.testing.assert_close(fast_steer(h, coder, plan_for(coder, u)), ref, atol=1e-9, rtol=0)
    # composition is not the sum of separate edits: the ReLU acts on the summed code
    sep = (
        h
        + (reference_steer(h, coder, 1.5 * a.code_vector().double()) - h)
        + (reference_steer(h, coder, -0.7 * b.code_vector().double()) - h)
    )
    assert not torch.allclose(sep, ref, atol=1e-6)


def test_plan_rejects_wrong_shape(coders64: dict[str, SparseCoder]) -> None:
    with pytest.raises(ValueError, match="shape"):
        plan_for(coders64["standard"], torch.zeros(3, dtype=torch.float64))


def test_code_space_sum_rejects_dense(coders64: dict[str, SparseCoder]) -> None:
    from vectors_testkit import dense_meta

    d = SteeringVector.dense_vector(dense_meta(), torch.ones(16))
    with pytest.raises(ValueError, match="dense"):
        code_space_sum([(d, 1.0)], 64)
