"""`LayerSlots.steer` over a flat batch of tokens (a slot id and a phase per token, as the vLLM engine runs it)
must equal the per-row form (the native engine's) and the float64 reference, and keep unsteered or switched-off
tokens bit for bit."""

from __future__ import annotations

import pytest
import torch

from tests.vectors.kit_vectors import SAE_VARIANTS, dense_meta, random_code, sae_meta
from vectors.sae import SparseCoder
from vectors.slots import LayerSlots, compose
from vectors.vector import SteeringVector

D_MODEL = 16
LAYER = 1


def _configs(coder: SparseCoder) -> list[dict[SteeringVector, float]]:
    d = coder.d_sae
    a = SteeringVector.from_code(sae_meta("t/a", d_sae=d), random_code(d, 20, seed=10))
    gen = SteeringVector.from_code(sae_meta("t/gen", d_sae=d, apply="generation"), random_code(d, 9, seed=13))
    dense = SteeringVector.dense_vector(
        dense_meta("t/dense"), torch.randn(D_MODEL, generator=torch.Generator().manual_seed(14))
    )
    return [{}, {a: 1.5}, {gen: 2.0}, {a: -1.0, dense: 0.5}]


@pytest.mark.parametrize("variant", sorted(SAE_VARIANTS))
def test_token_form_equals_row_form(variant: str, coders64: dict[str, SparseCoder]) -> None:
    coder = coders64[variant]
    configs = _configs(coder)
    table = LayerSlots(LAYER, len(configs), D_MODEL, coder, 64, torch.device("cpu"), torch.float64)
    for slot, config in enumerate(configs):
        table.write(slot, compose(config, {LAYER: coder}, D_MODEL).get(LAYER))
    g = torch.Generator().manual_seed(3)
    h = 1.5 * torch.randn(len(configs), 5, D_MODEL, dtype=torch.float64, generator=g)
    for phase, is_prompt in (("prompt", True), ("generation", False)):
        table.active[:, 0, 0].copy_(table.on[phase])
        rows = table.steer(h, slice(0, len(configs)))
        slots = torch.arange(len(configs)).repeat_interleave(5)  # token t of row r → slot r
        prompt = torch.full((slots.numel(),), is_prompt)
        flat = h.reshape(-1, 1, D_MODEL)
        tokens = table.steer(flat, slots, table.token_active(slots, prompt)).reshape_as(h)
        torch.testing.assert_close(tokens, rows, rtol=1e-12, atol=1e-12)
        off = ~table.on[phase]
        assert torch.equal(tokens[off], h[off])  # unsteered / phase-off rows untouched, bit for bit
    # one batch mixing phases: each token takes its own phase's switch
    slots = torch.tensor([2, 2, 1, 2])
    prompt = torch.tensor([True, False, True, True])
    mixed = table.steer(h[:4, :1].reshape(-1, 1, D_MODEL), slots, table.token_active(slots, prompt))
    assert torch.equal(mixed[0], h[0, :1]) and torch.equal(
        mixed[3], h[3, :1]
    )  # "gen" is off for prompt tokens
    assert not torch.equal(mixed[1], h[1, :1]) and not torch.equal(mixed[2], h[2, :1])
