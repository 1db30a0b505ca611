"""Fixtures of the vLLM engine's tests: a culture world vLLM's CPU attention can run, and its catalog.

These tests run in the vLLM venv (`make test`: `var/vllm-venv/bin/pytest tests/vllm`, requirements/lock-vllm.txt);
in a venv without vLLM they are not collected. vLLM's CPU attention takes head sizes from 32 up, so the world is
`WorldConfig.small()` with 2 heads (head_dim 32) instead of 4 (16).
"""

from __future__ import annotations

import importlib.metadata
import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")  # GiB: vLLM's CPU KV cache (the default takes 4)

from typing import Any

import pytest

from tests.vllm.kit_vllm import VllmWorld, write_catalog


def _vllm_installed() -> bool:
    """vLLM's distribution (GPU `vllm` or CPU `vllm-cpu`) is installed: a spec lookup alone could find a folder."""
    for dist in ("vllm", "vllm-cpu"):
        try:
            importlib.metadata.distribution(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
        return True
    return False


if not _vllm_installed():
    collect_ignore_glob = ["test_*.py"]  # the main venv: these run in var/vllm-venv


@pytest.fixture(scope="session")
def vllm_world(tmp_path_factory: pytest.TempPathFactory) -> VllmWorld:
    import dataclasses
    import json

    from trainer.world import WorldConfig, build_world

    root = tmp_path_factory.mktemp("vllm") / "world"
    build_world(root, dataclasses.replace(WorldConfig.small(), num_heads=2), verbose=False)
    config = json.loads((root / "model" / "config.json").read_text())
    sae_cfg = json.loads((root / "sae" / "cfg.json").read_text())
    from vectors.metadata import layer_from_hook_name

    world = VllmWorld(
        root=root,
        model=root / "model",
        sae=root / "sae",
        catalog=root / "vectors",
        layer=layer_from_hook_name(sae_cfg["metadata"]["hook_name"]),
        num_layers=int(config["num_hidden_layers"]),
    )
    write_catalog(world)
    return world


@pytest.fixture(scope="session")
def native_model(vllm_world: VllmWorld) -> Any:
    """Our engine on the same world, float32 on the CPU: the tokens vLLM must reproduce."""
    from server.engine.model import EngineConfig, LoadedModel

    return LoadedModel.load(
        EngineConfig(
            model=str(vllm_world.model),
            sae=(str(vllm_world.sae),),
            device="cpu",
            dtype="float32",
            max_batch=16,
            model_name="culture-world",
        )
    )
