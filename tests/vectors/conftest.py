"""Fixtures for the tests of `vectors`: random sae-lens SAEs saved once per session and loaded back."""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"

from pathlib import Path

import pytest
import torch

from tests.vectors.kit_vectors import SAE_VARIANTS, save_variant
from vectors.sae import SparseCoder, load_sae


@pytest.fixture(scope="session")
def sae_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Every SAE variant saved with sae-lens `save_model` to its own folder."""
    root = tmp_path_factory.mktemp("saes")
    return {v: save_variant(root, v) for v in SAE_VARIANTS}


@pytest.fixture(scope="session")
def coders64(sae_dirs: dict[str, Path]) -> dict[str, SparseCoder]:
    """Every variant loaded through `load_sae` in float64."""
    return {v: load_sae(p, dtype=torch.float64) for v, p in sae_dirs.items()}
