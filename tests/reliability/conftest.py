"""Fixtures of the reliability tests: their own tiny world (built with the server tests' helpers) and engine."""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"

import pytest

from server.engine.model import LoadedModel
from tests.server.kit_world import TinyWorld, build_tiny_world, load_engine


@pytest.fixture(scope="session")
def rel_world(tmp_path_factory: pytest.TempPathFactory) -> TinyWorld:
    return build_tiny_world(tmp_path_factory.mktemp("rel-world"))


@pytest.fixture(scope="session")
def rel_engine(rel_world: TinyWorld) -> LoadedModel:
    return load_engine(rel_world)
