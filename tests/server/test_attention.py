"""`grouped_sdpa`: a one-token query on the key/value heads gives transformers' SDPA result, eager and compiled;
longer queries are transformers' own function."""

from __future__ import annotations

import torch
from transformers.integrations.sdpa_attention import sdpa_attention_forward

from server.engine.attention import grouped_sdpa


class Heads(torch.nn.Module):
    """What the attention functions read of an attention module."""

    num_key_value_groups = 4
    is_causal = True


def inputs(q_len: int, keys: int = 24) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(q_len)
    query = torch.randn(3, 8, q_len, 16, generator=g)
    key = torch.randn(3, 2, keys, 16, generator=g)
    value = torch.randn(3, 2, keys, 16, generator=g)
    allowed = torch.rand(3, 1, q_len, keys, generator=g) > 0.3
    allowed[..., 0] = True
    mask = torch.where(allowed, 0.0, torch.finfo(torch.float32).min)
    return query, key, value, mask


def test_one_token_equals_transformers_sdpa_eager_and_compiled() -> None:
    query, key, value, mask = inputs(1)
    want, _ = sdpa_attention_forward(Heads(), query, key, value, mask, scaling=0.25)
    got, _ = grouped_sdpa(Heads(), query, key, value, mask, scaling=0.25)
    assert torch.equal(got, want)  # eager: the same folding transformers does for one token

    compiled = torch.compile(lambda *a: grouped_sdpa(Heads(), *a, scaling=0.25)[0], fullgraph=True)
    assert torch.allclose(compiled(query, key, value, mask), want, atol=1e-5)


def test_longer_queries_are_transformers_own() -> None:
    query, key, value, mask = inputs(5)
    want, _ = sdpa_attention_forward(Heads(), query, key, value, mask, scaling=0.25)
    got, _ = grouped_sdpa(Heads(), query, key, value, mask, scaling=0.25)
    assert torch.equal(got, want)


def test_a_model_switched_to_it_keeps_its_masks() -> None:
    """A whole model on `grouped_sdpa` computes what it did on SDPA, here a prompt longer than Gemma 3's sliding
    window (transformers builds no mask for an attention implementation without a mask function: the window
    would be dropped)."""
    from transformers import AutoModelForCausalLM, Gemma3TextConfig

    from server.engine.attention import NAME, use_grouped_sdpa, use_stock_sdpa

    config = Gemma3TextConfig(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=1,
        head_dim=16,
        sliding_window=8,
        layer_types=["sliding_attention", "full_attention"],
        attn_implementation="sdpa",
    )
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config).eval()
    ids = torch.randint(0, 64, (2, 20), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want = model(ids).logits
        assert use_grouped_sdpa(model) and model.config._attn_implementation == NAME
        got = model(ids).logits
        use_stock_sdpa(model)
        again = model(ids).logits
    assert torch.allclose(got, want, atol=1e-5)
    assert torch.equal(again, want)
