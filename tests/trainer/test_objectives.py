"""The preference objective: ln 2 at v = 0, exact gradients, fast form == reference form."""

from __future__ import annotations

import math

import pytest
import torch

from trainer.logprobs import make_batch, pair_rows, response_logprobs
from trainer.objectives import (
    BipoSteer,
    YapoSteer,
    keep_top_k,
    mean_difference,
    preference_loss,
    preference_margin,
    soft_threshold_,
    threshold_relative,
)
from trainer.tokens import encode_pairs
from trainer.train import reference_logprobs
from vectors.hooks import layer_hook
from vectors.scoring import option_logprobs


def _loss(res, steer, encoded, ref_w, ref_l, d: float, beta: float = 0.1):
    batch = make_batch(pair_rows(encoded))
    steer.direction = d
    with layer_hook(res.model, 1, steer):
        logp = response_logprobs(res.model, batch)
    n = len(encoded)
    return preference_loss(preference_margin(logp[:n], logp[n:], ref_w, ref_l), d, beta)


def test_preference_loss_is_ln2_at_zero_margin():
    zero = torch.zeros(5)
    assert float(preference_loss(zero, 1.0, 0.1)) == pytest.approx(math.log(2), abs=1e-7)
    assert float(preference_loss(zero, -1.0, 0.1)) == pytest.approx(math.log(2), abs=1e-7)


@pytest.mark.parametrize("d", [1.0, -1.0])
def test_model_loss_at_v0_is_ln2(tiny_res, morocco_pairs, d):
    encoded, _ = encode_pairs(tiny_res.tokenizer, morocco_pairs[:6])
    ref_w, ref_l = reference_logprobs(tiny_res, encoded)
    steer = YapoSteer(tiny_res.coder)
    assert float(_loss(tiny_res, steer, encoded, ref_w, ref_l, d).detach()) == pytest.approx(
        math.log(2), abs=1e-6
    )


def test_response_logprobs_match_shared_scorer(tiny_res, morocco_pairs):
    """Left-padded training batches give the same response log-probs as `vectors.scoring`."""
    encoded, _ = encode_pairs(tiny_res.tokenizer, morocco_pairs[:5])
    logp = response_logprobs(tiny_res.model, make_batch(pair_rows(encoded)))
    for i, p in enumerate(morocco_pairs[:5]):
        expect = option_logprobs(tiny_res.model, tiny_res.tokenizer, p.prompt, [p.chosen, p.rejected])
        assert float(logp[i]) == pytest.approx(expect[0], abs=1e-4)
        assert float(logp[5 + i]) == pytest.approx(expect[1], abs=1e-4)


def _finite_difference_check(res, steer, encoded, coords, d):
    ref_w, ref_l = reference_logprobs(res, encoded)
    loss = _loss(res, steer, encoded, ref_w, ref_l, d, beta=1.0)
    (grad,) = torch.autograd.grad(loss, [steer.v])
    eps = 1e-6
    for i in coords:
        with torch.no_grad():
            steer.v[i] += eps
            up = float(_loss(res, steer, encoded, ref_w, ref_l, d, beta=1.0))
            steer.v[i] -= 2 * eps
            down = float(_loss(res, steer, encoded, ref_w, ref_l, d, beta=1.0))
            steer.v[i] += eps
        assert float(grad[i]) == pytest.approx((up - down) / (2 * eps), rel=1e-5, abs=1e-9)
    return grad


@pytest.mark.parametrize("mode", ["fast", "reference"])
@pytest.mark.parametrize("d", [1.0, -1.0])
def test_yapo_gradient_matches_finite_differences(tiny_res64, morocco_pairs, mode, d):
    encoded, _ = encode_pairs(tiny_res64.tokenizer, morocco_pairs[:4])
    steer = YapoSteer(tiny_res64.coder, mode=mode, dtype=torch.float64)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():  # mixed signs, away from 0 so no ReLU kink sits within eps
        steer.v.copy_(torch.randn(steer.v.shape, generator=g, dtype=torch.float64) * 0.5)
    coords = steer.v.abs().argsort(descending=True)[:6].tolist()
    grad = _finite_difference_check(tiny_res64, steer, encoded, coords, d)
    assert grad.abs().sum() > 0


def test_bipo_gradient_matches_finite_differences(tiny_res64, morocco_pairs):
    encoded, _ = encode_pairs(tiny_res64.tokenizer, morocco_pairs[:4])
    steer = BipoSteer(tiny_res64.hidden_size, dtype=torch.float64)
    with torch.no_grad():
        steer.v.copy_(
            torch.randn(steer.v.shape, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
        )
    _finite_difference_check(tiny_res64, steer, encoded, [0, 5, 17], 1.0)


def test_fast_and_reference_yapo_agree(tiny_res64, morocco_pairs):
    """Same loss and same gradient (incl. at v = 0, where only active features get gradient)."""
    encoded, _ = encode_pairs(tiny_res64.tokenizer, morocco_pairs[:4])
    ref_w, ref_l = reference_logprobs(tiny_res64, encoded)
    for init in (0.0, 0.3):
        grads = []
        for mode in ("fast", "reference"):
            steer = YapoSteer(tiny_res64.coder, mode=mode, dtype=torch.float64)
            with torch.no_grad():
                steer.v.copy_(
                    init
                    * torch.randn(
                        steer.v.shape, generator=torch.Generator().manual_seed(3), dtype=torch.float64
                    )
                )
            loss = _loss(tiny_res64, steer, encoded, ref_w, ref_l, -1.0)
            grads.append((float(loss.detach()), torch.autograd.grad(loss, [steer.v])[0]))
        assert grads[0][0] == pytest.approx(grads[1][0], abs=1e-10)
        torch.testing.assert_close(grads[0][1], grads[1][1], atol=1e-10, rtol=1e-8)
    assert grads[0][1].abs().sum() > 0


def test_estimators_and_sparsifiers():
    pos = torch.tensor([[1.0, 2.0, 0.0], [3.0, 2.0, 1.0]])
    neg = torch.tensor([[0.0, 2.0, 1.0], [1.0, 0.0, 1.0]])
    torch.testing.assert_close(mean_difference(pos, neg), torch.tensor([1.5, 1.0, -0.5]))
    v = torch.tensor([1.0, -0.2, 0.5, -0.9])
    torch.testing.assert_close(threshold_relative(v, 0.5), torch.tensor([1.0, 0.0, 0.5, -0.9]))
    torch.testing.assert_close(keep_top_k(v, 2), torch.tensor([1.0, 0.0, 0.0, -0.9]))
    soft_threshold_(v, 0.3)
    torch.testing.assert_close(v, torch.tensor([0.7, 0.0, 0.2, -0.6]))
