"""Hooks on real Hugging Face model classes: batched per-row steering inside `generate` with the KV cache.

Prompts in a batch have equal length (no padding), so a row run alone sees exactly the same computation
shapes per position as in the batch; the tests then require identical greedy tokens row by row.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from vectors.tables import build_tables
from vectors_testkit import dense_meta, make_sae_lens, random_code, sae_meta

from vectors.hooks import decoder_layers, steering_hooks
from vectors.sae import SparseCoder, load_sae
from vectors.steering import reference_steer
from vectors.vector import SteeringVector

HIDDEN, LAYERS, VOCAB, LAYER = 32, 3, 96, 1
NEW_TOKENS = 6


def _llama() -> torch.nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=HIDDEN,
        intermediate_size=64,
        num_hidden_layers=LAYERS,
        num_attention_heads=4,
        num_key_value_heads=2,
        initializer_range=0.2,
    )
    return LlamaForCausalLM(cfg)


def _gemma2() -> torch.nn.Module:
    from transformers import Gemma2Config, Gemma2ForCausalLM

    cfg = Gemma2Config(
        vocab_size=VOCAB,
        hidden_size=HIDDEN,
        intermediate_size=64,
        num_hidden_layers=LAYERS,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=8,
        initializer_range=0.2,
        sliding_window=16,
        attn_implementation="eager",
    )
    return Gemma2ForCausalLM(cfg)


def _qwen2() -> torch.nn.Module:
    from transformers import Qwen2Config, Qwen2ForCausalLM

    cfg = Qwen2Config(
        vocab_size=VOCAB,
        hidden_size=HIDDEN,
        intermediate_size=64,
        num_hidden_layers=LAYERS,
        num_attention_heads=4,
        num_key_value_heads=2,
        initializer_range=0.2,
    )
    return Qwen2ForCausalLM(cfg)


def _gpt2() -> torch.nn.Module:
    from transformers import GPT2Config, GPT2LMHeadModel

    cfg = GPT2Config(
        vocab_size=VOCAB, n_embd=HIDDEN, n_layer=LAYERS, n_head=4, n_positions=64, initializer_range=0.2
    )
    return GPT2LMHeadModel(cfg)


MODELS: dict[str, Callable[[], torch.nn.Module]] = {
    "llama": _llama,
    "gemma2": _gemma2,
    "qwen2": _qwen2,
    "gpt2": _gpt2,
}


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
        tables = build_tables(configs, [coder], HIDDEN)
        assert set(tables) == {1, 2}
        with steering_hooks(model, tables) as session:
            batched, logits = _generate(model, ids)
        assert session.phase == "generation" and session.forwards == NEW_TOKENS
        for b, config in enumerate(configs):
            with steering_hooks(model, build_tables([config], [coder], HIDDEN)):
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
    """Logits with the table hooks == logits with a hand-written hook applying the YaPO reference."""
    torch.manual_seed(1)
    model = _llama().double().eval()
    c64 = coder.to(dtype=torch.float64)
    configs = [{vecs["mixed"]: 1.3}, {}, {vecs["neg"]: 0.7, vecs["mixed"]: -0.4}]
    ids = torch.randint(1, VOCAB, (3, 6), generator=torch.Generator().manual_seed(8))
    with torch.no_grad(), steering_hooks(model, build_tables(configs, [c64], HIDDEN, dtype=torch.float64)):
        got = model(input_ids=ids).logits
    expected = []
    for b, config in enumerate(configs):
        u = sum(
            (s * v.code_vector().double() for v, s in config.items()), torch.zeros(128, dtype=torch.float64)
        )

        def hook(_m: object, _a: object, out: torch.Tensor, u: torch.Tensor = u) -> torch.Tensor:
            return reference_steer(out, c64, u)

        handle = decoder_layers(model)[LAYER].register_forward_hook(hook)
        try:
            with torch.no_grad():
                expected.append(model(input_ids=ids[b : b + 1]).logits[0])
        finally:
            handle.remove()
    torch.testing.assert_close(got, torch.stack(expected), atol=1e-9, rtol=0)


def test_tuple_outputs_and_manual_phase(coder: SparseCoder, vecs: dict[str, SteeringVector]) -> None:
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
    tables = build_tables([{vecs["mixed"]: 1.0}, {}], [coder], HIDDEN, apply_override="prompt")
    with torch.no_grad(), steering_hooks(model, tables, auto_phase=False) as session:
        steered, extra = model(x)
        assert extra == "extra" and not torch.equal(steered[0], base[0]) and torch.equal(steered[1], base[1])
        assert session.phase == "prompt"  # not flipped by the forward
        session.phase = "generation"
        assert torch.equal(model(x)[0], base)  # a prompt-only vector does nothing while generating


def test_hooks_removed_after_exception(coder: SparseCoder, vecs: dict[str, SteeringVector]) -> None:
    model = _llama().eval()
    tables = build_tables([{vecs["mixed"]: 1.0}, {}], [coder], HIDDEN)
    with pytest.raises(RuntimeError, match="boom"), steering_hooks(model, tables):
        assert decoder_layers(model)[LAYER]._forward_hooks
        raise RuntimeError("boom")
    assert not decoder_layers(model)[LAYER]._forward_hooks and not model._forward_hooks
    ids = torch.randint(1, VOCAB, (3, 4))  # batch of 3 against a 2-row table: the hook raises inside forward
    with pytest.raises(ValueError, match="batch of 2"), torch.no_grad(), steering_hooks(model, tables):
        model(input_ids=ids)
    assert not decoder_layers(model)[LAYER]._forward_hooks and not model._forward_hooks
    with pytest.raises(ValueError, match="out of range"), steering_hooks(model, {7: tables[LAYER]}):
        pass
    with pytest.raises(ValueError, match="decoder layers"):
        decoder_layers(torch.nn.Linear(2, 2))
