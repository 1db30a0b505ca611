"""Tiny random models of the four families the engine supports (Llama, Gemma-2 with a sliding window, Qwen2,
GPT-2), shared by the hook tests and the engine tests."""

from __future__ import annotations

from collections.abc import Callable

import torch

HIDDEN, LAYERS, VOCAB = 32, 3, 96


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
