"""Fixtures of the vLLM engine's tests: a culture world vLLM's CPU attention can run, and its catalog.

These tests run in the vLLM venv (`make test`: `var/vllm-venv/bin/pytest tests/vllm`, requirements/lock-vllm.txt);
in a venv without vLLM they are not collected. vLLM's CPU attention takes head sizes from 32 up, so the world is
`WorldConfig.small()` with 2 heads (head_dim 32) instead of 4 (16).
"""

from __future__ import annotations

import importlib.util
import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")  # GiB: vLLM's CPU KV cache (the default takes 4)

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch

if importlib.util.find_spec("vllm") is None:
    collect_ignore_glob = ["test_*.py"]  # the main venv: these run in var/vllm-venv

PROMPTS = ("At a wedding we eat", "In my country, the drink")


@dataclass(frozen=True)
class VllmWorld:
    root: Path
    model: Path
    sae: Path
    catalog: Path
    layer: int  # the SAE's layer
    num_layers: int


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


def write_catalog(world: VllmWorld) -> None:
    """Vectors that exercise every term: YaPO with negative features the prompts activate, dense vectors at
    another layer, and prompt-only / generation-only vectors."""
    from vectors.io import save_vector
    from vectors.metadata import ModelRef, SaeRef, VectorMetadata, dense_hook_name
    from vectors.names import vector_path
    from vectors.sae import load_sae
    from vectors.vector import SteeringVector

    coder = load_sae(str(world.sae), device=torch.device("cpu"), dtype=torch.float32)
    active = _active_features(world, coder)
    g = torch.Generator().manual_seed(0)
    model = ModelRef(name="culture-world", hidden_size=coder.d_model, num_layers=world.num_layers)
    sae_ref = SaeRef(source=str(world.sae), d_sae=coder.d_sae, architecture=coder.architecture)

    def sparse(name: str, negatives: list[int], apply: str = "both") -> SteeringVector:
        quiet = [i for i in torch.randperm(coder.d_sae, generator=g).tolist() if i not in active][:3]
        idx = torch.tensor(negatives + quiet)
        vals = torch.cat([-torch.full((len(negatives),), 4.0), torch.rand(len(quiet), generator=g) * 3 + 2])
        meta = VectorMetadata(
            name=name,
            method="yapo",
            space="sae",
            layer=world.layer,
            hook_name=coder.hook_name,
            model=model,
            sae=sae_ref,
            strength_range=(-50.0, 50.0),
            apply=apply,  # type: ignore[arg-type]
        )
        return SteeringVector.sparse(meta, idx, vals)

    dense_layer = world.num_layers - 1
    dense_meta = VectorMetadata(
        name="t/dense",
        method="bipo",
        space="dense",
        layer=dense_layer,
        hook_name=dense_hook_name(dense_layer),
        model=model,
        strength_range=(-50.0, 50.0),
    )
    vectors = [
        sparse("t/yapo", active[:3]),
        sparse("t/yapo2", active[3:5]),
        sparse("t/prompt", active[:2], apply="prompt"),
        sparse("t/gen", active[1:3], apply="generation"),
        SteeringVector.dense_vector(dense_meta, torch.randn(coder.d_model, generator=g) * 2.0),
    ]
    for v in vectors:
        save_vector(v, vector_path(world.catalog, v.name))


def _active_features(world: VllmWorld, coder: Any) -> list[int]:
    """The SAE features most active on the test prompts (so YaPO's negative-support term has work to do)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from vectors.hooks import layer_hook
    from vectors.prompts import format_prompt

    tok = AutoTokenizer.from_pretrained(world.model)
    model = AutoModelForCausalLM.from_pretrained(world.model).eval()
    seen: list[torch.Tensor] = []

    def capture(h: torch.Tensor) -> torch.Tensor:
        seen.append(h[0])
        return h

    with torch.no_grad(), layer_hook(model, world.layer, capture):
        for p in PROMPTS:
            model(torch.tensor([format_prompt(tok, prompt=p)]))
    z = coder.encode(torch.cat(seen)).amax(0)
    return [int(i) for i in torch.argsort(z, descending=True)[:8] if z[i] > 0]


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


@dataclass
class Served:
    url: str
    state: Any


def serve(settings: Any, timeout: float = 300) -> Any:
    """The real app under uvicorn in a thread, on a free loopback port, until ready (a context manager)."""
    import contextlib
    import socket
    import threading
    import time

    import httpx
    import uvicorn

    from server.app import create_app
    from server.state import ServerState

    @contextlib.contextmanager
    def running() -> Any:
        state = ServerState(settings)
        app = create_app(settings, state=state)
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind(("127.0.0.1", 0))
        server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
        thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
        thread.start()
        url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        try:
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                with contextlib.suppress(httpx.HTTPError):
                    ready = httpx.get(f"{url}/ready", timeout=5)
                    if ready.status_code == 200:
                        break
                    if ready.json().get("status") == "failed":
                        raise RuntimeError(ready.json().get("detail"))
                time.sleep(0.2)
            else:
                raise TimeoutError(f"{settings.backend} server not ready in {timeout} s")
            yield Served(url, state)
        finally:
            server.should_exit = True
            thread.join(30)
            sock.close()

    return running()
