"""SAE access: our `SparseCoder` reproduces sae-lens encode/decode for every supported variant."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tests.vectors.kit_vectors import SAE_VARIANTS, make_sae_lens, save_variant
from vectors.errors import SaeLoadError
from vectors.sae import SparseCoder, layer_from_hook_name, load_sae


def test_layer_from_hook_name_both_conventions() -> None:
    assert layer_from_hook_name("blocks.12.hook_resid_post") == 12
    assert layer_from_hook_name("model.layers.3") == 3
    for bad in ("blocks.3.hook_resid_pre", "model.layers.3.mlp", "layers.3", "blocks.x.hook_resid_post"):
        with pytest.raises(ValueError):
            layer_from_hook_name(bad)


@pytest.mark.parametrize("variant", sorted(SAE_VARIANTS))
def test_coder_matches_sae_lens(variant: str, sae_dirs: dict[str, Path]) -> None:
    from sae_lens import SAE

    sae = SAE.load_from_disk(str(sae_dirs[variant]))
    coder = load_sae(sae_dirs[variant])
    assert coder.architecture == SAE_VARIANTS[variant]["arch"]
    assert coder.layer == 1 and coder.source == str(sae_dirs[variant])
    h = torch.randn(3, 5, coder.d_model, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        z_ref = sae.encode(h)
        recon_ref = sae.decode(z_ref)  # uses the normalisation stats of the encode just above
    z = coder.encode(h)
    assert (z_ref > 0).sum() > 0 and (z_ref == 0).sum() > 0  # the check is not vacuous
    torch.testing.assert_close(z, z_ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(coder.decode(z, ref=h), recon_ref, atol=1e-5, rtol=1e-5)


def test_encode_subset_equals_full_encode(coders64: dict[str, SparseCoder]) -> None:
    idx = torch.tensor([0, 5, 17, 40, 63])
    h = torch.randn(4, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    for coder in coders64.values():
        if coder.elementwise:
            torch.testing.assert_close(
                coder.encode_subset(h, idx), coder.encode(h)[..., idx], atol=1e-12, rtol=0
            )
        else:
            with pytest.raises(ValueError):
                coder.encode_subset(h, idx)


def test_to_changes_dtype_and_keeps_config(coders64: dict[str, SparseCoder]) -> None:
    c = coders64["jumprelu_layernorm"].to(dtype=torch.float32)
    assert c.W_enc.dtype == c.threshold.dtype == torch.float32  # type: ignore[union-attr]
    assert (c.normalization, c.hook_name, c.layer) == ("layer_norm", "model.layers.1", 1)


def test_decode_of_normalising_sae_needs_ref(coders64: dict[str, SparseCoder]) -> None:
    c = coders64["standard_constnorm"]
    with pytest.raises(ValueError, match="ref"):
        c.decode(torch.zeros(c.d_sae, dtype=torch.float64))


def test_missing_folder_is_sae_load_error(tmp_path: Path) -> None:
    with pytest.raises(SaeLoadError, match="no such SAE folder"):
        load_sae(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(SaeLoadError, match=r"cfg\.json"):
        load_sae(tmp_path / "empty")


def test_pretrained_offline_fails_with_one_line_message() -> None:
    with pytest.raises(SaeLoadError) as info:
        load_sae("gemma-scope-2b-pt-res-canonical/layer_12/width_16k/canonical")
    msg = str(info.value)
    assert "gemma-scope-2b-pt-res-canonical" in msg and "\n" not in msg
    assert info.value.__cause__ is None and info.value.__suppress_context__


def test_unsupported_hook_name_and_corrupt_weights(tmp_path: Path) -> None:
    sae = make_sae_lens("standard")
    sae.cfg.metadata.hook_name = "blocks.1.hook_resid_pre"
    sae.save_model(tmp_path / "pre")
    with pytest.raises(SaeLoadError, match="unsupported hook name"):
        load_sae(tmp_path / "pre")
    folder = save_variant(tmp_path, "standard")
    (folder / "sae_weights.safetensors").write_bytes(b"garbage")
    with pytest.raises(SaeLoadError, match="cannot load SAE"):
        load_sae(folder)


def test_unsupported_normalisation_is_rejected(tmp_path: Path) -> None:
    folder = save_variant(tmp_path, "standard")
    cfg = json.loads((folder / "cfg.json").read_text())
    cfg["architecture"] = "gated"
    (folder / "cfg.json").write_text(json.dumps(cfg))
    with pytest.raises(SaeLoadError):
        load_sae(folder)
