"""Load the frozen pieces a trainer or evaluator works on: model, tokenizer and (optionally) SAE.

Loaded once and passed around (`Resources`), so the demo can train and evaluate many vectors without
reloading anything.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from vectors.device import DTYPES
from vectors.metadata import ModelRef


def parse_dtype(name: str | torch.dtype) -> torch.dtype:
    if isinstance(name, torch.dtype):
        return name
    try:
        return DTYPES[name]
    except KeyError:
        raise ValueError(f"unknown dtype {name!r} (choose from {sorted(DTYPES)})") from None


@dataclass
class Resources:
    """A frozen model + tokenizer (+ SAE coder), with the identifiers recorded in vector metadata."""

    model: Any
    tokenizer: Any
    model_name: str
    coder: Any | None = None
    sae_source: str | None = None

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def num_layers(self) -> int:
        from vectors.hooks import decoder_layers

        return len(decoder_layers(self.model))

    @property
    def hidden_size(self) -> int:
        cfg = self.model.config
        return int(getattr(cfg, "hidden_size", None) or cfg.n_embd)

    def model_ref(self) -> ModelRef:
        return ModelRef(name=self.model_name, hidden_size=self.hidden_size, num_layers=self.num_layers)


def load_resources(
    model: str,
    sae: str | None = None,
    *,
    device: str = "cpu",
    dtype: str | torch.dtype = "float32",
    sae_dtype: str | torch.dtype = "float32",
) -> Resources:
    """Load a causal LM (HF id or local dir), its tokenizer and optionally an SAE, all frozen."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from vectors.sae import load_sae

    tok = AutoTokenizer.from_pretrained(model)
    lm = AutoModelForCausalLM.from_pretrained(model, dtype=parse_dtype(dtype)).to(device)
    lm.eval().requires_grad_(False)
    coder = load_sae(sae, device=device, dtype=parse_dtype(sae_dtype)) if sae else None
    return Resources(model=lm, tokenizer=tok, model_name=model, coder=coder, sae_source=sae)


__all__ = ["DTYPES", "Resources", "load_resources", "parse_dtype"]
