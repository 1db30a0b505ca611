"""Fixtures of the trainer tests: tiny in-memory model + SAE (built once per session)."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from tests.trainer.kit_tiny import tiny_pairs, tiny_resources


@pytest.fixture(scope="session")
def tiny_res():
    """A random 3-layer Llama, word-level tokenizer and random standard SAE at layer 1 (float32)."""
    return tiny_resources()


@pytest.fixture(scope="session")
def tiny_res64():
    """The same pieces in float64 (for finite-difference checks)."""
    import torch

    return tiny_resources(dtype=torch.float64)


@pytest.fixture()
def morocco_pairs():
    return tiny_pairs("morocco")
