"""Session-wide fixtures: the small culture world, built once per test session in a temp dir."""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"  # offline hub look-ups otherwise retry for ~26 s before failing
# Servers the tests start (in process or as `steer serve`) decode eagerly unless a test asks for the compiled step:
# compiling every server's buckets would cost minutes; tests/server/test_compiled.py covers that path.
os.environ.setdefault("STEER_ENGINE", "eager")

import json
from pathlib import Path
from typing import Any

import pytest


@pytest.fixture(scope="session")
def world_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small culture world (`WorldConfig.small()`) built into a session temp dir."""
    from trainer.world import WorldConfig, build_world

    out = tmp_path_factory.mktemp("culture") / "world"
    build_world(out, WorldConfig.small(), verbose=False)
    return out


@pytest.fixture(scope="session")
def world_summary(world_dir: Path) -> dict[str, Any]:
    """The small world's `world.json`."""
    return json.loads((world_dir / "world.json").read_text())


@pytest.fixture(scope="session")
def world_lm(world_dir: Path) -> tuple[Any, Any]:
    """(model, tokenizer) of the small world, loaded the way the server loads them."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(world_dir / "model")
    model = AutoModelForCausalLM.from_pretrained(world_dir / "model").eval()
    return model, tokenizer
