"""Weights and KV-cache memory of the paper's models and Gemma Scope SAEs, from their configs (no download).

    python -m bench.memory_table

Models: Gemma2ForCausalLM built on the meta device from google/gemma-2-{2b,9b}-it's config.json values
(parameters counted, no memory used). SAEs: d_in and d_sae as sae-lens' own `gemma_2` loader derives them
from the release's folder names; a JumpReLU SAE holds W_enc and W_dec (d_in x d_sae each), b_enc and
threshold (d_sae) and b_dec (d_in). Prints a markdown table (GB = 10^9 bytes).
"""

from __future__ import annotations

import torch

from bench.gemma_shape import gemma_config

# The hub's config.json values that differ from the shrunk look-alike's.
MODELS = {
    "google/gemma-2-2b-it": {
        "num_hidden_layers": 26,
        "num_attention_heads": 8,
        "num_key_value_heads": 4,
        "intermediate_size": 9216,
    },
    "google/gemma-2-9b-it": {
        "hidden_size": 3584,
        "num_hidden_layers": 42,
        "num_attention_heads": 16,
        "num_key_value_heads": 8,
        "intermediate_size": 14336,
    },
}
SCOPE = {
    "google/gemma-2-2b-it": "google/gemma-scope-2b-pt-res",
    "google/gemma-2-9b-it": "google/gemma-scope-9b-pt-res",
}
# Widths of the canonical residual releases (9b: 65k at layer 20 only, 131k at every layer).
WIDTHS = {"google/gemma-2-2b-it": ("16k", "65k"), "google/gemma-2-9b-it": ("16k", "65k", "131k")}


def model_row(model_id: str) -> tuple[int, int]:
    """(parameters, KV-cache bytes per token in bf16)."""
    from transformers import Gemma2Config, Gemma2ForCausalLM

    cfg = Gemma2Config(**{**gemma_config(256000), **MODELS[model_id]})
    with torch.device("meta"):
        model = Gemma2ForCausalLM(cfg)
    params = sum(p.numel() for p in model.parameters())
    kv = 2 * cfg.num_key_value_heads * cfg.head_dim * cfg.num_hidden_layers * 2
    return params, kv


def sae_params(repo_id: str, width: str) -> int:
    from sae_lens.loading.pretrained_sae_loaders import get_gemma_2_config_from_hf

    cfg = get_gemma_2_config_from_hf(repo_id, f"layer_12/{width}/average_l0_1", device=None)
    d_in, d_sae = cfg["d_in"], cfg["d_sae"]
    return 2 * d_in * d_sae + 2 * d_sae + d_in


def main() -> None:
    gb = 1e9
    print("| model + SAE | parameters | bf16 (GPU) | float32 (CPU) | KV cache per token (bf16) |")
    print("|---|---|---|---|---|")
    for model_id in MODELS:
        params, kv = model_row(model_id)
        print(
            f"| {model_id} | {params / 1e9:.2f} B | {2 * params / gb:.2f} GB | {4 * params / gb:.2f} GB "
            f"| {kv / 1024:.0f} KiB |"
        )
        for width in WIDTHS[model_id]:
            n = sae_params(SCOPE[model_id], f"width_{width}")
            print(
                f"| + Gemma Scope {width} | {n / 1e6:.0f} M | {2 * n / gb:.2f} GB | {4 * n / gb:.2f} GB | |"
            )


if __name__ == "__main__":
    main()
