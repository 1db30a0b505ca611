"""Per-row tables: each batch row gets exactly its own steering, unsteered rows stay bit-identical."""

from __future__ import annotations

import pytest
import torch
from vectors.tables import build_tables, check_config
from vectors_testkit import SAE_VARIANTS, dense_meta, random_code, sae_meta

from vectors.sae import SparseCoder
from vectors.steering import reference_steer
from vectors.vector import SteeringVector

D_MODEL = 16


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
    """Reference: code-space vectors summed before the ReLU, dense vectors added to h."""
    u = torch.zeros(coder.d_sae, dtype=torch.float64)
    dense = torch.zeros(D_MODEL, dtype=torch.float64)
    for v, s in config.items():
        if v.space == "sae":
            u += s * v.code_vector().double()
        else:
            dense += s * v.dense.double()  # type: ignore[union-attr]
    out = reference_steer(h, coder, u) if u.any() else h
    return out + dense


@pytest.mark.parametrize("variant", sorted(SAE_VARIANTS))
def test_rows_match_reference(variant: str, coders64: dict[str, SparseCoder]) -> None:
    coder = coders64[variant]
    v = _vectors(coder)
    configs = [
        {},
        {v["a"]: 1.5},
        {v["a"]: 1.5, v["b"]: -0.8},
        {v["pos"]: 2.0, v["dense"]: 0.5},
        {v["a"]: 1.5},  # same as row 1: shares its table row
        {v["a"]: 0.0},  # strength 0: unsteered
        {v["dense"]: -1.0},
        {v["b"]: 1.0, v["a"]: 1.5},
    ]
    h = torch.randn(len(configs), 5, D_MODEL, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    h[0, 0, :3] = -0.0  # -0.0 survives only if unsteered rows are returned untouched
    tables = build_tables(configs, {1: coder}, D_MODEL, dtype=torch.float64)
    assert list(tables) == [1]
    t = tables[1]
    assert t.rows_used == 6  # unsteered + 5 distinct configs (rows 1 and 4 share, row 5 is unsteered)
    assert t.row_of[1] == t.row_of[4] and t.row_of[0] == t.row_of[5] == 0
    out = t.steer(h, "prompt")
    for b, config in enumerate(configs):
        if b in (0, 5):
            assert torch.equal(out[b], h[b]) and torch.equal(torch.signbit(out[b]), torch.signbit(h[b]))
        else:
            torch.testing.assert_close(out[b], _expected(h[b], coder, config), atol=1e-9, rtol=0)
            assert not torch.allclose(out[b], h[b])


def test_fixed_capacity_and_in_place_reload(coders64: dict[str, SparseCoder]) -> None:
    coder = coders64["jumprelu"]
    v = _vectors(coder)
    h = torch.randn(3, 4, D_MODEL, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    kw = dict(dtype=torch.float64, capacity_rows=6, capacity_k=40, layers=[1, 2])
    first = build_tables([{v["a"]: 1.0}, {}, {v["b"]: -1.0}], {1: coder}, D_MODEL, **kw)
    second = build_tables([{}, {v["dense"]: 2.0, v["a"]: 0.5}, {v["a"]: 1.0}], {1: coder}, D_MODEL, **kw)
    assert first[1].delta.shape == second[1].delta.shape == (6, D_MODEL)
    assert first[1].neg_idx.shape == (6, 40) and set(first) == {1, 2}
    assert torch.equal(first[2].steer(h, "prompt"), h)  # forced layer with nothing to do
    storage = first[1].delta.data_ptr()
    first[1].load_(second[1])
    assert first[1].delta.data_ptr() == storage  # contents changed, tensors did not
    assert torch.equal(first[1].steer(h, "prompt"), second[1].steer(h, "prompt"))
    expected = _expected(h[1], coder, {v["dense"]: 2.0, v["a"]: 0.5})
    torch.testing.assert_close(first[1].steer(h, "prompt")[1], expected, atol=1e-9, rtol=0)
    with pytest.raises(ValueError, match="capacity_rows"):
        build_tables([{v["a"]: float(i + 1)} for i in range(6)], {1: coder}, D_MODEL, capacity_rows=6)
    with pytest.raises(ValueError, match="capacity_k"):
        build_tables([{v["a"]: 1.0}], {1: coder}, D_MODEL, capacity_k=3)


def test_phase_switches(coders64: dict[str, SparseCoder]) -> None:
    coder = coders64["standard"]
    v = _vectors(coder)
    configs = [{v["gen"]: 1.0}, {v["a"]: 1.0}, {v["a"]: 1.0}, {v["a"]: 1.0}]
    h = torch.randn(4, 3, D_MODEL, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    t = build_tables(
        configs, [coder], D_MODEL, dtype=torch.float64, apply_override=[None, None, "prompt", "generation"]
    )[1]
    prompt, gen = t.steer(h, "prompt"), t.steer(h, "generation")
    steered = (
        [not torch.equal(prompt[b], h[b]) for b in range(4)],
        [not torch.equal(gen[b], h[b]) for b in range(4)],
    )
    assert steered == ([False, True, True, False], [True, True, False, True])
    all_prompt = build_tables(configs, [coder], D_MODEL, dtype=torch.float64, apply_override="prompt")[1]
    assert torch.equal(all_prompt.steer(h, "generation"), h)
    with pytest.raises(ValueError, match="phase"):
        t.steer(h, "decode")  # type: ignore[arg-type]


def test_invalid_configs(coders64: dict[str, SparseCoder]) -> None:
    coder = coders64["standard"]
    v = _vectors(coder)
    bad = [
        ({v["a"]: 1.0, v["gen"]: 1.0}, [coder], "different apply phases"),
        ({v["a"]: 1.0}, None, "no SAE"),
        ({v["a"]: float("nan")}, [coder], "finite"),
    ]
    for config, coders, message in bad:  # the admission check refuses exactly what the table builder refuses
        with pytest.raises(ValueError, match=message):
            build_tables([config], coders, D_MODEL)
        with pytest.raises(ValueError, match=message):
            check_config(config, coders, D_MODEL)
    check_config({v["a"]: 1.0, v["gen"]: 1.0}, [coder], D_MODEL, apply_override="both")
    with pytest.raises(ValueError, match="2 rows"):
        build_tables([{v["a"]: 1.0}, {}], [coder], D_MODEL)[1].steer(torch.zeros(3, 1, D_MODEL), "prompt")
    # a config that cancels out is unsteered; dense vectors need no SAE
    cancel = build_tables([{v["a"]: 1.0, v["a"].with_meta(name="t/a2"): -1.0}], [coder], D_MODEL)
    assert cancel[1].row_of.tolist() == [0] and cancel[1].rows_used == 1
    dense_only = build_tables([{v["dense"]: 1.0}], None, D_MODEL)
    assert dense_only[1].coder is None and dense_only[1].rows_used == 2


def test_bfloat16_tables_keep_unsteered_rows_exact(coders64: dict[str, SparseCoder]) -> None:
    coder = coders64["jumprelu"]
    v = _vectors(coder)
    h64 = torch.randn(3, 4, D_MODEL, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    h = h64.to(torch.bfloat16)
    t = build_tables([{}, {v["a"]: 1.0}, {v["a"]: 0.0}], {1: coder}, D_MODEL, dtype=torch.bfloat16)[1]
    out = t.steer(h, "prompt")
    assert out.dtype == torch.bfloat16 and torch.equal(out[0], h[0]) and torch.equal(out[2], h[2])
    expected = _expected(h[1].double(), coder, {v["a"]: 1.0})
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
        "fast_steer",
        "plan_for",
        "SparsePlan",
        "code_space_sum",
        "LayerTable",
        "build_tables",
        "decoder_layers",
        "steering_hooks",
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
