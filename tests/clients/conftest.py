"""Fixtures of the real-client tests: the real server (uvicorn on 127.0.0.1) on the server tests' tiny world,
and on the small culture world with a trained vector."""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.clients.kit_culture import COUNTRY, VECTOR, Culture
from tests.server.kit_server import run_server, settings_for
from tests.server.kit_world import TinyWorld, build_tiny_world


@pytest.fixture(scope="session")
def client_world(tmp_path_factory: pytest.TempPathFactory) -> TinyWorld:
    return build_tiny_world(tmp_path_factory.mktemp("client-world"))


@pytest.fixture(scope="module")
def tiny_server(client_world: TinyWorld) -> Iterator[Any]:
    """The tiny world served as `tiny` (greedy answers differ per vector: good for checking steering arrives)."""
    with run_server(settings_for(client_world, model_name="tiny")) as running:
        yield running


@pytest.fixture(scope="module")
def culture(world_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Culture]:
    """The small culture world served with a mean-difference (CAA) vector for COUNTRY in a private catalog."""
    from trainer.config import TrainConfig
    from trainer.train import train_vector

    catalog = tmp_path_factory.mktemp("client-catalog")
    train_vector(
        TrainConfig(
            method="caa",
            model=str(world_dir / "model"),
            sae=str(world_dir / "sae"),
            data=str(world_dir / "data" / "pairs" / f"{COUNTRY}.jsonl"),
            where={"split": "train"},
            name=VECTOR,
            out=str(catalog),
            progress=False,
            target=COUNTRY,
        )
    )
    world = TinyWorld(model=world_dir / "model", sae=world_dir / "sae", catalog=catalog)
    settings = settings_for(world, max_batch=8, max_new_tokens=16)
    with run_server(settings) as running:
        yield Culture(world_dir, catalog, running.url, running.runtime.settings.served_name)
