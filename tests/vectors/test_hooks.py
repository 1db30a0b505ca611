"""Hooks on real Hugging Face model classes: per-slot steering inside `generate` with the KV cache.

Prompts in a batch have equal length (no padding), so a row run alone sees exactly the same computation
shapes per position as in the batch; the tests then require identical greedy tokens row by row.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch

from tests.kit_families import HIDDEN, LAYERS, MODELS, VOCAB
from tests.vectors.kit_vectors import dense_meta, make_sae_lens, random_code, sae_meta
from vectors.hooks import decoder_layers, layer_hook
from vectors.sae import SparseCoder, load_sae
from vectors.slots import SlotSteering, compose
from vectors.steering import reference_steer
from vectors.vector import SteeringVector

LAYER = 1
NEW_TOKENS = 6


@pytest.fixture(scope="module")
def coder(tmp_path_factory: pytest.TempPathFactory) -> SparseCoder:
    """A JumpReLU SAE on layer 1 of the tiny models, saved with sae-lens and loaded back."""
    folder: Path = tmp_path_factory.mktemp("hook_sae") / "sae"
    make_sae_lens("jumprelu", d_in=HIDDEN, d_sae=128, layer=LAYER, hook_style="hf", seed=3).save_model(folder)
    return load_sae(folder)


@pytest.fixture(scope="module")
def vecs(coder: SparseCoder) -> dict[str, SteeringVector]:
    def meta(name: str, **kw: object) -> object:
        return sae_meta(
            name,
            layer=LAYER,
            d_model=HIDDEN,
            num_layers=LAYERS,
            d_sae=128,
            hook_name="model.layers.1",
            architecture="jumprelu",
            **kw,
        )

    return {
        "mixed": SteeringVector.from_code(meta("h/mixed"), random_code(128, 40, seed=1, scale=3.0)),
        "neg": SteeringVector.from_code(
            meta("h/neg"), random_code(128, 30, seed=2, sign="negative", scale=3.0)
        ),
        "gen": SteeringVector.from_code(
            meta("h/gen", apply="generation"), random_code(128, 40, seed=4, scale=3.0)
        ),
        "dense": SteeringVector.dense_vector(
            dense_meta("h/dense", layer=2, d_model=HIDDEN, num_layers=LAYERS),
            3.0 * torch.randn(HIDDEN, generator=torch.Generator().manual_seed(5)),
        ),
    }


def _generate(model: torch.nn.Module, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Greedy tokens [B, NEW_TOKENS] and the logits of each step [B, NEW_TOKENS, V]."""
    out = model.generate(  # type: ignore[operator]
        input_ids=ids,
        attention_mask=torch.ones_like(ids),
        max_new_tokens=NEW_TOKENS,
        min_new_tokens=NEW_TOKENS,
        do_sample=False,
        pad_token_id=0,
        use_cache=True,
        return_dict_in_generate=True,
        output_logits=True,
    )
    return out.sequences[:, ids.shape[1] :], torch.stack(out.logits, dim=1)


@contextmanager
def slot_steering(model: torch.nn.Module, coder: SparseCoder, configs: list[dict]) -> Iterator[SlotSteering]:
    """One slot per row; the first forward of `generate` runs in the prompt phase, the others in generation."""
    steering = SlotSteering(model, [coder], len(configs), max_neg=64)
    calls = []

    def phase(_m: object, _a: object) -> None:
        steering.select(0, len(configs), "prompt" if not calls else "generation")
        calls.append(1)

    handle = model.register_forward_pre_hook(phase)
    try:
        for slot, config in enumerate(configs):
            steering.write(slot, compose(config, [coder], HIDDEN))
        yield steering
    finally:
        handle.remove()
        steering.close()


@pytest.mark.parametrize("arch", sorted(MODELS))
def test_batched_rows_equal_rows_alone(
    arch: str, coder: SparseCoder, vecs: dict[str, SteeringVector]
) -> None:
    torch.manual_seed(0)
    model = MODELS[arch]().eval()
    assert len(decoder_layers(model)) == LAYERS
    configs = [
        {},
        {vecs["mixed"]: 1.0},
        {vecs["neg"]: 1.5, vecs["dense"]: 1.0},
        {vecs["mixed"]: 0.0},
        {vecs["gen"]: 1.0},
        {vecs["dense"]: -1.0, vecs["mixed"]: -1.0},
    ]
    ids = torch.randint(1, VOCAB, (len(configs), 7), generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        plain, plain_logits = _generate(model, ids)
        with slot_steering(model, coder, configs):
            batched, logits = _generate(model, ids)
        for b, config in enumerate(configs):
            with slot_steering(model, coder, [config]):
                alone, alone_logits = _generate(model, ids[b : b + 1])
            assert torch.equal(batched[b], alone[0]), f"row {b}"
            torch.testing.assert_close(logits[b], alone_logits[0], atol=1e-4, rtol=1e-4)
    for b in (0, 3):  # unsteered rows, and strength 0: exactly the unsteered model
        assert torch.equal(batched[b], plain[b]) and torch.equal(logits[b], plain_logits[b])
    for b in (1, 2, 5):  # steered rows really changed
        assert (logits[b] - plain_logits[b]).abs().max() > 0.1
    # the generation-only vector leaves the prompt pass alone, then acts
    assert (
        torch.equal(logits[4, 0], plain_logits[4, 0])
        and (logits[4, 1:] - plain_logits[4, 1:]).abs().max() > 0.1
    )
    assert all(not layer._forward_hooks for layer in decoder_layers(model)) and not model._forward_hooks


def test_hooked_forward_matches_reference_float64(
    coder: SparseCoder, vecs: dict[str, SteeringVector]
) -> None:
    """Logits with the slot hooks == logits with a hand-written hook applying the YaPO reference."""
    torch.manual_seed(1)
    model = MODELS["llama"]().double().eval()
    c64 = coder.to(dtype=torch.float64)
    configs = [{vecs["mixed"]: 1.3}, {}, {vecs["neg"]: 0.7, vecs["mixed"]: -0.4}]
    ids = torch.randint(1, VOCAB, (3, 6), generator=torch.Generator().manual_seed(8))
    with torch.no_grad(), slot_steering(model, c64, configs):
        got = model(input_ids=ids).logits
    expected = []
    for b, config in enumerate(configs):
        u = sum(
            (s * v.code_vector().double() for v, s in config.items()), torch.zeros(128, dtype=torch.float64)
        )
        with torch.no_grad(), layer_hook(model, LAYER, lambda h, u=u: reference_steer(h, c64, u)):
            expected.append(model(input_ids=ids[b : b + 1]).logits[0])
    torch.testing.assert_close(got, torch.stack(expected), atol=1e-9, rtol=0)


def test_tuple_outputs() -> None:
    layer = torch.nn.Linear(HIDDEN, HIDDEN)

    class TupleBlock(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner = layer

        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, str]:
            return self.inner(x), "extra"

    class Tiny(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.layers = torch.nn.ModuleList([TupleBlock(), TupleBlock()])

        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, str]:
            return self.layers[1](self.layers[0](x)[0])

    model = Tiny()
    x = torch.randn(2, 3, HIDDEN)
    base = model(x)[0]
    with torch.no_grad(), layer_hook(model, 1, lambda h: h + 1.0):
        steered, extra = model(x)
    assert extra == "extra" and torch.allclose(steered, base + 1.0)
    assert torch.equal(model(x)[0], base)


def test_hooks_removed_after_exception() -> None:
    model = MODELS["llama"]().eval()
    with pytest.raises(RuntimeError, match="boom"), layer_hook(model, LAYER, lambda h: h):
        assert decoder_layers(model)[LAYER]._forward_hooks
        raise RuntimeError("boom")
    assert not decoder_layers(model)[LAYER]._forward_hooks
    with pytest.raises(ValueError, match="out of range"), layer_hook(model, 7, lambda h: h):
        pass
    with pytest.raises(ValueError, match="decoder layers"):
        decoder_layers(torch.nn.Linear(2, 2))
