"""Fixtures for the server tests: the tiny world (`kit_world`) saved to disk once per session, and one engine
loaded over it. The real-server runner is `kit_server.run_server`."""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"

import pytest

from server.engine.model import LoadedModel
from tests.server.kit_world import TinyWorld, build_tiny_world, load_engine


@pytest.fixture(scope="session")
def tiny_world(tmp_path_factory: pytest.TempPathFactory) -> TinyWorld:
    return build_tiny_world(tmp_path_factory.mktemp("tiny-world"))


@pytest.fixture(scope="session")
def tiny_engine(tiny_world: TinyWorld) -> LoadedModel:
    """One engine for the whole session (tests run one at a time; each server gets its own scheduler)."""
    return load_engine(tiny_world)
