"""Builders shared by the tests of `vectors`: random sae-lens SAEs, metadata, random code vectors."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from vectors.metadata import ModelRef, SaeRef, VectorMetadata, dense_hook_name

# variant name -> sae-lens construction arguments; covers every architecture and input handling we support
SAE_VARIANTS: dict[str, dict[str, Any]] = {
    "standard": {"arch": "standard"},
    "standard_no_bdec_in": {"arch": "standard", "apply_b_dec_to_input": False},
    "standard_constnorm": {"arch": "standard", "norm": "constant_norm_rescale"},
    "jumprelu": {"arch": "jumprelu"},
    "jumprelu_layernorm": {"arch": "jumprelu", "norm": "layer_norm", "hook_style": "hf"},
    "topk": {"arch": "topk"},
    "topk_rescaled": {"arch": "topk", "rescale": True},
}


def make_sae_lens(
    arch: str,
    *,
    d_in: int = 16,
    d_sae: int = 64,
    layer: int = 1,
    norm: str = "none",
    apply_b_dec_to_input: bool = True,
    hook_style: str = "blocks",
    k: int = 8,
    rescale: bool = False,
    seed: int = 0,
) -> Any:
    """A sae-lens SAE of the given architecture with random (but sensible) weights."""
    from sae_lens import (
        JumpReLUSAE,
        JumpReLUSAEConfig,
        StandardSAE,
        StandardSAEConfig,
        TopKSAE,
        TopKSAEConfig,
    )
    from sae_lens.saes.sae import SAEMetadata

    hook = f"blocks.{layer}.hook_resid_post" if hook_style == "blocks" else f"model.layers.{layer}"
    common = dict(
        d_in=d_in,
        d_sae=d_sae,
        apply_b_dec_to_input=apply_b_dec_to_input,
        normalize_activations=norm,
        metadata=SAEMetadata(hook_name=hook, model_name="tiny"),
    )
    if arch == "standard":
        sae = StandardSAE(StandardSAEConfig(**common))
    elif arch == "jumprelu":
        sae = JumpReLUSAE(JumpReLUSAEConfig(**common))
    elif arch == "topk":
        sae = TopKSAE(TopKSAEConfig(k=k, rescale_acts_by_decoder_norm=rescale, **common))
    else:
        raise ValueError(arch)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        sae.W_enc.copy_(torch.randn(d_in, d_sae, generator=g) / d_in**0.5)
        sae.W_dec.copy_(
            torch.randn(d_sae, d_in, generator=g) / d_sae**0.5 * (1 + torch.rand(d_sae, 1, generator=g))
        )
        sae.b_enc.copy_(0.1 * torch.randn(d_sae, generator=g))
        sae.b_dec.copy_(0.2 * torch.randn(d_in, generator=g))
        if arch == "jumprelu":
            sae.threshold.copy_(0.3 * torch.rand(d_sae, generator=g))
    return sae


def save_variant(root: Path, variant: str, **overrides: Any) -> Path:
    """Build a variant and save it as a sae-lens folder under root; returns the folder."""
    kwargs = {**SAE_VARIANTS[variant], **overrides}
    sae = make_sae_lens(kwargs.pop("arch"), **kwargs)
    out = root / variant
    sae.save_model(out)
    return out


def model_ref(hidden_size: int = 16, num_layers: int = 4, name: str = "tiny") -> ModelRef:
    return ModelRef(name=name, hidden_size=hidden_size, num_layers=num_layers)


def sae_meta(
    name: str = "test/vec",
    *,
    layer: int = 1,
    d_model: int = 16,
    num_layers: int = 4,
    d_sae: int = 64,
    hook_name: str | None = None,
    architecture: str = "standard",
    **extra: Any,
) -> VectorMetadata:
    return VectorMetadata(
        name=name,
        method=extra.pop("method", "yapo"),
        space="sae",
        layer=layer,
        hook_name=hook_name or f"blocks.{layer}.hook_resid_post",
        model=model_ref(d_model, num_layers),
        sae=SaeRef(source="test-sae", d_sae=d_sae, architecture=architecture),
        **extra,
    )


def dense_meta(
    name: str = "test/dense", *, layer: int = 1, d_model: int = 16, num_layers: int = 4, **extra: Any
) -> VectorMetadata:
    return VectorMetadata(
        name=name,
        method=extra.pop("method", "bipo"),
        space="dense",
        layer=layer,
        hook_name=dense_hook_name(layer),
        model=model_ref(d_model, num_layers),
        **extra,
    )


def random_code(
    d_sae: int,
    nnz: int,
    *,
    seed: int,
    sign: str = "mixed",
    scale: float = 0.6,
    dtype: torch.dtype = torch.float64,
) -> torch.Tensor:
    """A code-space vector with `nnz` non-zeros: mixed sign, or all positive / all negative."""
    g = torch.Generator().manual_seed(seed)
    idx = torch.randperm(d_sae, generator=g)[:nnz]
    vals = scale * (0.2 + torch.rand(nnz, generator=g, dtype=torch.float64))
    if sign == "mixed":
        vals = vals * torch.where(torch.arange(nnz) % 2 == 0, 1.0, -1.0).to(vals)
    elif sign == "negative":
        vals = -vals
    u = torch.zeros(d_sae, dtype=torch.float64)
    u[idx] = vals
    return u.to(dtype)
