"""`SparseCoder`: our own float view of an SAE, and loading one through sae-lens.

sae-lens loads the files (local folder or pretrained release); we copy the weights into a plain dataclass so
the steering math is ours, runs in any dtype (float64 in tests) and has no hooks or hidden state. The coder
reproduces sae-lens's inference `encode`/`decode` for the standard (ReLU), JumpReLU and TopK architectures,
including `apply_b_dec_to_input` and run-time input normalisation.

Normalisation: sae-lens maps h to x = n(h) before encoding and maps reconstructions back with the inverse
per-token affine map. Both are affine per token, so ``Dec(z') - Dec(z) = s(h) * W_decᵀ (z' - z)`` with a
per-token scale s(h) (1/c for ``constant_norm_rescale``, std(h) for ``layer_norm``). `input_scale` returns
that s(h), which is what keeps the fast steering form exact for normalised SAEs.
"""

from __future__ import annotations

import contextlib
import io as _stdio
import logging
import os
import warnings
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

import torch

from vectors.access import not_readable, unreadable_file
from vectors.errors import SaeLoadError
from vectors.metadata import layer_from_hook_name

Architecture = Literal["standard", "jumprelu", "topk"]
Normalization = Literal["none", "constant_norm_rescale", "layer_norm"]

__all__ = ["SparseCoder", "coder_from_sae_lens", "layer_from_hook_name", "load_sae"]

# normalisations that sae-lens applies as the identity at inference (they are folded into weights on load)
_IDENTITY_NORMS = {"none", "expected_average_only_in", "covariance_whitening"}
LAYER_NORM_EPS = 1e-5


@dataclass
class SparseCoder:
    """An SAE on the residual stream after decoder block `layer`: z = σ(W_encᵀ(n(h) − a·b_dec) + b_enc)."""

    W_enc: torch.Tensor  # [d_model, d_sae]
    b_enc: torch.Tensor  # [d_sae]
    W_dec: torch.Tensor  # [d_sae, d_model]
    b_dec: torch.Tensor  # [d_model]
    architecture: Architecture = "standard"
    threshold: torch.Tensor | None = None  # [d_sae], JumpReLU only
    k: int | None = None  # TopK only
    apply_b_dec_to_input: bool = True
    normalization: Normalization = "none"
    hook_name: str = ""
    layer: int = 0
    source: str = ""

    def __post_init__(self) -> None:
        d_model, d_sae = self.W_enc.shape
        if (
            self.W_dec.shape != (d_sae, d_model)
            or self.b_enc.shape != (d_sae,)
            or self.b_dec.shape != (d_model,)
        ):
            raise ValueError("inconsistent SAE weight shapes")
        if self.architecture == "jumprelu" and (self.threshold is None or self.threshold.shape != (d_sae,)):
            raise ValueError("a JumpReLU SAE needs threshold [d_sae]")
        if self.architecture == "topk" and not (self.k and self.k > 0):
            raise ValueError("a TopK SAE needs k > 0")

    # --- shape facts --------------------------------------------------------------------------------------
    @property
    def d_model(self) -> int:
        return int(self.W_enc.shape[0])

    @property
    def d_sae(self) -> int:
        return int(self.W_enc.shape[1])

    @property
    def elementwise(self) -> bool:
        """True when feature i's activation depends only on its own pre-activation (not TopK)."""
        return self.architecture != "topk"

    @property
    def normalizes(self) -> bool:
        return self.normalization != "none"

    @property
    def dtype(self) -> torch.dtype:
        return self.W_enc.dtype

    @property
    def device(self) -> torch.device:
        return self.W_enc.device

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> SparseCoder:
        """Copy on another device / dtype."""

        def mv(t: torch.Tensor) -> torch.Tensor:
            return t.to(device=device, dtype=dtype)

        return replace(
            self,
            W_enc=mv(self.W_enc),
            b_enc=mv(self.b_enc),
            W_dec=mv(self.W_dec),
            b_dec=mv(self.b_dec),
            threshold=None if self.threshold is None else mv(self.threshold),
        )

    # --- the maps ------------------------------------------------------------------------------------------
    def preprocess(self, h: torch.Tensor) -> torch.Tensor:
        """The encoder input x = n(h) − a·b_dec."""
        h = h.to(self.dtype)
        if self.normalization == "constant_norm_rescale":
            h = h * (self.d_model**0.5 / h.norm(dim=-1, keepdim=True))
        elif self.normalization == "layer_norm":
            h = h - h.mean(dim=-1, keepdim=True)
            h = h / (h.std(dim=-1, keepdim=True) + LAYER_NORM_EPS)
        return h - self.b_dec if self.apply_b_dec_to_input else h

    def input_scale(self, h: torch.Tensor) -> torch.Tensor | None:
        """Per-token s(h) with Dec(z') − Dec(z) = s(h)·W_decᵀ(z' − z); None when it is exactly 1."""
        if self.normalization == "constant_norm_rescale":
            scale: torch.Tensor = h.to(self.dtype).norm(dim=-1, keepdim=True) / self.d_model**0.5
            return scale
        if self.normalization == "layer_norm":
            h = h.to(self.dtype)
            return (h - h.mean(dim=-1, keepdim=True)).std(dim=-1, keepdim=True)
        return None

    def activate(self, pre: torch.Tensor, threshold: torch.Tensor | None = None) -> torch.Tensor:
        """σ(pre). `threshold` overrides the JumpReLU threshold (for an encoder restricted to some features)."""
        if self.architecture == "jumprelu":
            thr = self.threshold if threshold is None else threshold
            assert thr is not None  # a JumpReLU SAE always has its threshold
            return torch.relu(pre) * (pre > thr).to(pre.dtype)
        if self.architecture == "topk":
            assert self.k is not None
            vals, idx = torch.topk(pre, k=min(self.k, pre.shape[-1]), dim=-1, sorted=False)
            return torch.zeros_like(pre).scatter_(-1, idx, torch.relu(vals))
        return torch.relu(pre)

    def encode(self, h: torch.Tensor) -> torch.Tensor:
        """Feature activations z(h) ≥ 0, [..., d_sae]."""
        return self.activate(self.preprocess(h) @ self.W_enc + self.b_enc)

    def encode_subset(self, h: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        """z(h) restricted to features `idx` [K] using only those encoder columns (element-wise SAEs only)."""
        if not self.elementwise:
            raise ValueError("encode_subset needs an element-wise SAE; TopK depends on all features")
        pre = self.preprocess(h) @ self.W_enc[:, idx] + self.b_enc[idx]
        thr = self.threshold[idx] if self.threshold is not None else None
        return self.activate(pre, thr)

    def decode(self, z: torch.Tensor, ref: torch.Tensor | None = None) -> torch.Tensor:
        """Reconstruction from codes z. With input normalisation, `ref` (the input h) gives the inverse map."""
        y = z.to(self.dtype) @ self.W_dec + self.b_dec
        if not self.normalizes:
            return y
        if ref is None:
            raise ValueError(
                f"decode() of a '{self.normalization}' SAE needs ref=h to undo the normalisation"
            )
        ref = ref.to(self.dtype)
        if self.normalization == "constant_norm_rescale":
            rescaled: torch.Tensor = y * (ref.norm(dim=-1, keepdim=True) / self.d_model**0.5)
            return rescaled
        mu = ref.mean(dim=-1, keepdim=True)
        return y * (ref - mu).std(dim=-1, keepdim=True) + mu


def coder_from_sae_lens(sae: Any, source: str) -> SparseCoder:
    """Copy a loaded sae-lens `SAE` into a `SparseCoder` (float tensors, same device and dtype)."""
    cfg = sae.cfg
    arch = cfg.architecture()
    if arch not in ("standard", "jumprelu", "topk"):
        raise SaeLoadError(
            f"{source}: unsupported SAE architecture {arch!r} (supported: standard, jumprelu, topk)"
        )
    if getattr(cfg, "reshape_activations", "none") != "none":
        raise SaeLoadError(
            f"{source}: SAE reshapes its input ({cfg.reshape_activations}); not a residual SAE"
        )
    act = getattr(sae, "activation_fn", None)
    if arch == "standard" and act is not None and type(act).__name__ != "ReLU":
        raise SaeLoadError(f"{source}: unsupported activation {type(sae.activation_fn).__name__}")
    norm = cfg.normalize_activations
    if norm in _IDENTITY_NORMS:
        norm = "none"
    elif norm not in ("constant_norm_rescale", "layer_norm"):
        raise SaeLoadError(f"{source}: unsupported normalize_activations {norm!r}")
    hook_name = cfg.metadata.hook_name
    if not hook_name:
        raise SaeLoadError(f"{source}: SAE config has no hook_name")
    try:
        layer = layer_from_hook_name(hook_name)
    except ValueError as e:
        raise SaeLoadError(f"{source}: {e}") from None

    with torch.no_grad():
        W_enc = sae.W_enc.detach().clone()
        b_enc = sae.b_enc.detach().clone()
        W_dec = sae.W_dec.detach().clone()
        b_dec = sae.b_dec.detach().clone()
        if arch == "topk" and getattr(cfg, "rescale_acts_by_decoder_norm", False):
            # sae-lens ranks pre·‖W_dec_i‖ and decodes (z/‖W_dec_i‖) @ W_dec: fold both into the weights
            n = W_dec.norm(dim=-1)
            W_enc, b_enc, W_dec = W_enc * n, b_enc * n, W_dec / n[:, None]
    return SparseCoder(
        W_enc=W_enc,
        b_enc=b_enc,
        W_dec=W_dec,
        b_dec=b_dec,
        architecture=arch,
        threshold=sae.threshold.detach().clone() if arch == "jumprelu" else None,
        k=int(cfg.k) if arch == "topk" else None,
        apply_b_dec_to_input=bool(cfg.apply_b_dec_to_input),
        normalization=norm,
        hook_name=hook_name,
        layer=layer,
        source=source,
    )


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


@contextlib.contextmanager
def _quiet() -> Any:
    """Silence sae-lens / hub chatter (warnings, progress output) while loading."""
    with warnings.catch_warnings(), contextlib.redirect_stderr(_stdio.StringIO()):
        warnings.simplefilter("ignore")
        logging.disable(logging.WARNING)
        try:
            yield
        finally:
            logging.disable(logging.NOTSET)


def _split_release(src: str) -> tuple[str, str]:
    """Split ``release/id``; a release known to sae-lens may itself contain '/' (a hub repo id)."""
    try:
        from sae_lens.loading.pretrained_saes_directory import get_pretrained_saes_directory

        known = get_pretrained_saes_directory()
    except Exception:
        known = {}
    for release in sorted(known, key=len, reverse=True):
        if src.startswith(release + "/"):
            return release, src[len(release) + 1 :]
    release, _, sae_id = src.partition("/")
    return release, sae_id


def load_sae(
    source: str | os.PathLike[str], device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32
) -> SparseCoder:
    """Load an SAE: a local sae-lens folder (cfg.json + sae_weights.safetensors) or a pretrained ``release/id``.

    Any failure raises `SaeLoadError` with a one-line message (no traceback chain), e.g. when the hub cannot
    be reached offline.
    """
    from sae_lens import SAE  # imported lazily: sae-lens import is slow

    src = str(source)
    path = Path(src).expanduser()
    try:
        if path.is_dir():
            if (bad := unreadable_file(path)) is not None:
                raise SaeLoadError(f"{bad}: {not_readable(bad)}")
            if not (path / "cfg.json").is_file():
                raise SaeLoadError(f"{src}: not an sae-lens folder (no cfg.json)")
            with _quiet():
                sae = SAE.load_from_disk(str(path), device=str(device), dtype=_dtype_name(dtype))
        else:
            release, sae_id = _split_release(src)
            if path.exists() or not release or not sae_id or src.startswith((".", "/", "~")):
                raise SaeLoadError(f"{src}: no such SAE folder, and not a pretrained 'release/id'")
            with _quiet():
                sae = SAE.from_pretrained(release, sae_id, device=str(device), dtype=_dtype_name(dtype))
    except SaeLoadError:
        raise
    except Exception as e:
        offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes")
        hint = " (HF_HUB_OFFLINE is set: only local folders or cached releases can load)" if offline else ""
        msg = str(e).strip().splitlines()
        detail = msg[0][:300] if msg else type(e).__name__
        raise SaeLoadError(f"cannot load SAE {src!r}: {type(e).__name__}: {detail}{hint}") from None
    coder = coder_from_sae_lens(sae, src)
    return coder.to(device=device, dtype=dtype)
