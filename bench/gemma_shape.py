"""Gemma-2-2B-it's shape as a transformers config, shrunk where a measurement or a test does not need the size.

One definition for the measurement scripts (`bench.lm_head`, `bench.memory_table`) and the tests' offline hub
look-alike (`tests/hub/kit_hub_home.py`), so that all of them build the same architecture.
"""

from __future__ import annotations

from typing import Any

GEMMA_WIDTH = 2304


def gemma_config(vocab_size: int) -> dict[str, Any]:
    """google/gemma-2-2b-it's config.json with depth, heads, MLP and vocabulary shrunk (width kept)."""
    return {
        "architectures": ["Gemma2ForCausalLM"],
        "attention_bias": False,
        "attention_dropout": 0.0,
        "attn_logit_softcapping": 50.0,
        "bos_token_id": 2,
        "cache_implementation": "hybrid",
        "eos_token_id": [1, 107],
        "final_logit_softcapping": 30.0,
        "head_dim": 256,
        "hidden_act": "gelu_pytorch_tanh",
        "hidden_activation": "gelu_pytorch_tanh",
        "hidden_size": GEMMA_WIDTH,
        "initializer_range": 0.02,
        "intermediate_size": 16,  # 9216
        "max_position_embeddings": 8192,
        "model_type": "gemma2",
        "num_attention_heads": 1,  # 8
        "num_hidden_layers": 3,  # 26
        "num_key_value_heads": 1,  # 4
        "pad_token_id": 0,
        "query_pre_attn_scalar": 256,
        "rms_norm_eps": 1e-06,
        "rope_theta": 10000.0,
        "sliding_window": 4096,
        "torch_dtype": "float32",
        "transformers_version": "4.42.4",
        "use_cache": True,
        "vocab_size": vocab_size,  # 256000
    }
