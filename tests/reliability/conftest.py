"""Fixtures of the reliability tests: their own tiny world (built with the server tests' helpers) and engine."""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"

import pytest

from server.engine import Engine, EngineConfig

from .relkit import TinyWorld, save_tiny_model, save_tiny_sae, write_catalog


@pytest.fixture(scope="session")
def rel_world(tmp_path_factory: pytest.TempPathFactory) -> TinyWorld:
    root = tmp_path_factory.mktemp("rel-world")
    world = TinyWorld(
        model=save_tiny_model(root / "model"), sae=save_tiny_sae(root / "sae"), catalog=root / "vectors"
    )
    world.catalog.mkdir()
    write_catalog(world)
    return world


@pytest.fixture(scope="session")
def rel_engine(rel_world: TinyWorld) -> Engine:
    return Engine.load(EngineConfig(model=str(rel_world.model), sae=(str(rel_world.sae),), device="cpu"))
