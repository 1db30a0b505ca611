"""Per-slot steering buffers: each slot gets exactly its own steering (== the YaPO reference in float64),
unsteered slots stay bit-identical, and writing, clearing or moving slots never reallocates a buffer."""

from __future__ import annotations

import pytest
import torch

from tests.vectors.kit_vectors import SAE_VARIANTS, dense_meta, random_code, sae_meta
from vectors.sae import SparseCoder
from vectors.slots import LayerRow, LayerSlots, compose
from vectors.steering import reference_steer
from vectors.vector import SteeringVector

D_MODEL = 16
LAYER = 1


def _vectors(coder: SparseCoder) -> dict[str, SteeringVector]:
    d_sae = coder.d_sae
    return {
        "a": SteeringVector.from_code(sae_meta("t/a", d_sae=d_sae), random_code(d_sae, 20, seed=10)),
        "b": SteeringVector.from_code(sae_meta("t/b", d_sae=d_sae), random_code(d_sae, 12, seed=11)),
        "pos": SteeringVector.from_code(
            sae_meta("t/pos", d_sae=d_sae), random_code(d_sae, 8, seed=12, sign="positive")
        ),
        "gen": SteeringVector.from_code(
            sae_meta("t/gen", d_sae=d_sae, apply="generation"), random_code(d_sae, 9, seed=13)
        ),
        "dense": SteeringVector.dense_vector(
            dense_meta("t/dense"), torch.randn(D_MODEL, generator=torch.Generator().manual_seed(14))
        ),
    }


def _expected(h: torch.Tensor, coder: SparseCoder, config: dict[SteeringVector, float]) -> torch.Tensor:
    """Reference: code-space vectors summed before the ReLU (full round trip), dense vectors added to h."""
    u = torch.zeros(coder.d_sae, dtype=torch.float64)
    dense = torch.zeros(D_MODEL, dtype=torch.float64)
    for v, s in config.items():
        if v.space == "sae":
            u += s * v.code_vector().double()
        else:
            dense += s * v.dense.double()  # type: ignore[union-attr]
    out = reference_steer(h, coder, u) if u.any() else h
    return out + dense


def _slots(
    coder: SparseCoder | None, n: int, max_neg: int = 64, dtype: torch.dtype = torch.float64
) -> LayerSlots:
    return LayerSlots(LAYER, n, D_MODEL, coder, max_neg, torch.device("cpu"), dtype)


def _steer(
    table: LayerSlots,
    coder: SparseCoder | None,
    configs: list[dict],
    h: torch.Tensor,
    phase: str = "prompt",
    apply: list[str | None] | None = None,
) -> torch.Tensor:
    coders = {LAYER: coder} if coder is not None else {}
    for slot, config in enumerate(configs):
        override = apply[slot] if apply else None
        table.write(slot, compose(config, coders, D_MODEL, apply_override=override).get(LAYER))
    n = len(configs)
    table.active[:n, 0, 0].copy_(table.on[phase][:n])
    return table.steer(h, slice(0, n))


@pytest.mark.parametrize("variant", sorted(SAE_VARIANTS))
def test_slots_match_reference(variant: str, coders64: dict[str, SparseCoder]) -> None:
    coder = coders64[variant]
    v = _vectors(coder)
    configs = [
        {},
        {v["a"]: 1.5},
        {v["a"]: 1.5, v["b"]: -0.8},  # composition: added in code space before the ReLU
        {v["pos"]: 2.0, v["dense"]: 0.5},
        {v["a"]: 0.0},  # strength 0: unsteered
        {v["dense"]: -1.0},
        {v["b"]: 1.0, v["a"]: -2.5},
        {v["a"]: 1.0, v["a"].with_meta(name="t/a2"): -1.0},  # cancels out: unsteered
    ]
    h = 1.5 * torch.randn(
        len(configs), 5, D_MODEL, dtype=torch.float64, generator=torch.Generator().manual_seed(0)
    )
    h[0, 0, :3] = -0.0  # -0.0 survives only if unsteered rows are returned untouched
    out = _steer(_slots(coder, len(configs)), coder, configs, h)
    for b, config in enumerate(configs):
        if b in (0, 4, 7):
            assert torch.equal(out[b], h[b]) and torch.equal(torch.signbit(out[b]), torch.signbit(h[b]))
        else:
            torch.testing.assert_close(out[b], _expected(h[b], coder, config), atol=1e-9, rtol=0)
            assert (out[b] - h[b]).abs().max() > 1e-2  # the vector really acts


def test_negative_term_exercises_both_branches(coders64: dict[str, SparseCoder]) -> None:
    """max(−z_N, u_N) picks −z (a feature switched off) on some positions and u (reduced) on others."""
    coder = coders64["jumprelu"]
    vec = SteeringVector.from_code(sae_meta("t/n", d_sae=coder.d_sae), random_code(coder.d_sae, 24, seed=3))
    h = 1.5 * torch.randn(6, 7, D_MODEL, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    z = coder.encode(h)
    clipped = free = 0
    for s in (-2.0, -0.5, 0.3, 1.0, 3.0):
        row = compose({vec: s}, {LAYER: coder}, D_MODEL)[LAYER]
        out = _steer(_slots(coder, 6), coder, [{vec: s}] * 6, h)
        torch.testing.assert_close(
            out, reference_steer(h, coder, s * vec.code_vector().double()), atol=1e-9, rtol=0
        )
        z_n = z[..., row.neg_idx]
        clipped += int((-z_n > row.neg_val).sum())
        free += int(((z_n > 0) & (-z_n < row.neg_val)).sum())
    assert clipped > 0 and free > 0


def test_phase_switches(coders64: dict[str, SparseCoder]) -> None:
    coder = coders64["standard"]
    v = _vectors(coder)
    configs = [{v["gen"]: 1.0}, {v["a"]: 1.0}, {v["a"]: 1.0}, {v["a"]: 1.0}]
    h = torch.randn(4, 3, D_MODEL, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    apply = [None, None, "prompt", "generation"]
    table = _slots(coder, 4)
    prompt = _steer(table, coder, configs, h, "prompt", apply)
    gen = _steer(table, coder, configs, h, "generation", apply)
    steered = (
        [not torch.equal(prompt[b], h[b]) for b in range(4)],
        [not torch.equal(gen[b], h[b]) for b in range(4)],
    )
    assert steered == ([False, True, True, False], [True, True, False, True])


def test_buffers_never_move(coders64: dict[str, SparseCoder]) -> None:
    """Writing, clearing and moving slots change contents only: every buffer keeps its address and shape."""
    coder = coders64["jumprelu"]
    v = _vectors(coder)
    table = _slots(coder, 4, max_neg=40)
    before = [(t.data_ptr(), t.shape) for t in table.buffers()]
    h = torch.randn(4, 2, D_MODEL, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    first = _steer(table, coder, [{v["a"]: 1.0}, {}, {v["b"]: -1.0}, {v["dense"]: 2.0, v["a"]: 0.5}], h)
    table.move(3, 1)  # compaction: slot 3's row now lives in slot 1
    moved = table.steer(h, slice(0, 4))
    torch.testing.assert_close(
        moved[1], _expected(h[1], coder, {v["dense"]: 2.0, v["a"]: 0.5}), atol=1e-9, rtol=0
    )
    assert torch.equal(moved[3], h[3]) and torch.equal(moved[0], first[0])
    table.clear(0)
    assert torch.equal(table.steer(h, slice(0, 4))[0], h[0])
    assert [(t.data_ptr(), t.shape) for t in table.buffers()] == before
    # more negative features than the gathered buffers hold: the exact full-encode path, in the same buffers' slot
    many, code = _too_many(coder)
    table.write(2, many)
    table.active[:4, 0, 0].copy_(table.on["prompt"][:4])  # what `SlotSteering.select` does before a forward
    assert table.needs_full_encode(slice(0, 4)) and not table.needs_full_encode(slice(0, 2))
    torch.testing.assert_close(
        table.steer(h, slice(0, 4))[2], reference_steer(h[2], coder, code), atol=1e-9, rtol=0
    )
    table.move(2, 0)
    assert table.needs_full_encode(slice(0, 1)) and not table.needs_full_encode(slice(1, 4))
    torch.testing.assert_close(
        table.steer(h, slice(0, 4))[0], reference_steer(h[0], coder, code), atol=1e-9, rtol=0
    )
    table.clear(0)
    assert not table.full_slots and torch.equal(table.steer(h, slice(0, 4))[0], h[0])
    assert [(t.data_ptr(), t.shape) for t in table.buffers()] == before


def _too_many(coder: SparseCoder) -> tuple[LayerRow, torch.Tensor]:
    """A row with more negative features than a 40-feature buffer holds (and some positive ones); and its u."""
    code = random_code(coder.d_sae, 50, seed=9, sign="negative") + random_code(
        coder.d_sae, 6, seed=8, sign="positive"
    )
    vec = SteeringVector.from_code(sae_meta("t/many", d_sae=coder.d_sae), code)
    return compose({vec: 1.0}, {LAYER: coder}, D_MODEL)[LAYER], vec.code_vector().double()


def test_invalid_configs(coders64: dict[str, SparseCoder]) -> None:
    coder = coders64["standard"]
    v = _vectors(coder)
    bad = [
        ({v["a"]: 1.0, v["gen"]: 1.0}, [coder], "different apply phases"),
        ({v["a"]: 1.0}, None, "no SAE"),
        ({v["a"]: float("nan")}, [coder], "finite"),
    ]
    for config, coders, message in bad:
        with pytest.raises(ValueError, match=message):
            compose(config, coders, D_MODEL)
    assert set(compose({v["a"]: 1.0, v["gen"]: 1.0}, [coder], D_MODEL, apply_override="both")) == {LAYER}
    dense_only = compose({v["dense"]: 1.0}, None, D_MODEL)[LAYER]
    assert dense_only.neg_idx.numel() == 0 and dense_only.code_delta is None


def test_bfloat16_keeps_unsteered_rows_exact(coders64: dict[str, SparseCoder]) -> None:
    coder = coders64["jumprelu"].to(dtype=torch.bfloat16)
    v = _vectors(coder)
    h64 = torch.randn(3, 4, D_MODEL, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    h = h64.to(torch.bfloat16)
    out = _steer(_slots(coder, 3, dtype=torch.bfloat16), coder, [{}, {v["a"]: 1.0}, {v["a"]: 0.0}], h)
    assert out.dtype == torch.bfloat16 and torch.equal(out[0], h[0]) and torch.equal(out[2], h[2])
    expected = _expected(h[1].double(), coders64["jumprelu"], {v["a"]: 1.0})
    torch.testing.assert_close(out[1].double(), expected, atol=0.1, rtol=0.05)


def test_public_api_matches_the_contract() -> None:
    import vectors

    for name in [
        "SteeringVector",
        "VectorMetadata",
        "ModelRef",
        "SaeRef",
        "load_vector",
        "save_vector",
        "read_metadata",
        "update_metadata",
        "SparseCoder",
        "load_sae",
        "coder_from_sae_lens",
        "layer_from_hook_name",
        "reference_steer",
        "compose",
        "LayerRow",
        "SlotSteering",
        "apply_config",
        "decoder_layers",
        "layer_hook",
        "install_hooks",
        "Catalog",
        "ModelInfo",
        "check_compatible",
        "model_info_from_config",
        "validate_name",
        "vector_path",
        "name_from_path",
        "NAME_PATTERN",
    ]:
        assert hasattr(vectors, name), name
