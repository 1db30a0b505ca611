"""Fixtures for the server tests: a tiny random Llama, a random sae-lens SAE and a small vector catalog,
saved to disk once per session, plus a helper that runs the real server (uvicorn on 127.0.0.1, free port)."""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"

import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch
import uvicorn
from engine_doubles import installed, runner_double
from server_testkit import save_tiny_model

from server.app import create_app
from server.engine.model import EngineConfig, LoadedModel
from server.settings import ServerSettings
from server.state import ServerState

LAYER = 2
D_SAE = 256


@dataclass(frozen=True)
class TinyWorld:
    model: Path
    sae: Path
    catalog: Path


def save_tiny_sae(out: Path, d_in: int = 64, d_sae: int = D_SAE, layer: int = LAYER, seed: int = 0) -> Path:
    from sae_lens import StandardSAE, StandardSAEConfig
    from sae_lens.saes.sae import SAEMetadata

    torch.manual_seed(seed)
    cfg = StandardSAEConfig(
        d_in=d_in,
        d_sae=d_sae,
        metadata=SAEMetadata(hook_name=f"blocks.{layer}.hook_resid_post", model_name="tiny"),
    )
    sae = StandardSAE(cfg)
    with torch.no_grad():
        for p in (sae.W_enc, sae.W_dec):
            p.copy_(torch.randn_like(p) / d_in**0.5)
        sae.b_enc.copy_(torch.randn_like(sae.b_enc) * 0.01)
    out.mkdir(parents=True, exist_ok=True)
    sae.save_model(str(out))
    return out


def make_vector(engine_or_world: Any, name: str, *, kind: str = "sparse", seed: int = 0, **meta: Any) -> Any:
    """A random vector for the tiny world: `sparse` (mixed signs), `positive`, or `dense`."""
    from vectors.metadata import ModelRef, SaeRef, VectorMetadata, dense_hook_name
    from vectors.vector import SteeringVector

    g = torch.Generator().manual_seed(seed)
    model = ModelRef(name=meta.pop("model_name", "tiny"), hidden_size=64, num_layers=4)
    fields: dict[str, Any] = {"strength_range": (-50.0, 50.0), "method": "yapo", **meta}
    if kind == "dense":
        md = VectorMetadata(
            name=name, space="dense", layer=LAYER, hook_name=dense_hook_name(LAYER), model=model, **fields
        )
        return SteeringVector.dense_vector(md, torch.randn(64, generator=g) * 0.5)
    sae_src = str(getattr(engine_or_world, "sae", "tiny-sae"))
    md = VectorMetadata(
        name=name,
        space="sae",
        layer=LAYER,
        hook_name=f"blocks.{LAYER}.hook_resid_post",
        model=model,
        sae=SaeRef(source=sae_src, d_sae=D_SAE, architecture="standard"),
        **fields,
    )
    idx = torch.randperm(D_SAE, generator=g)[:6]
    vals = torch.rand(6, generator=g) * 2 + 1
    if kind == "sparse":
        vals[::2] *= -1
    return SteeringVector.sparse(md, idx, vals)


CATALOG = {  # name -> (kind, seed)
    "demo/alpha": ("positive", 1),
    "demo/beta": ("sparse", 2),
    "demo/gamma": ("dense", 3),
    "demo/delta": ("positive", 4),
    "culture/one": ("sparse", 5),
    "culture/two": ("positive", 6),
    "culture/three": ("sparse", 7),
}


def write_catalog(world: TinyWorld, names: dict[str, tuple[str, int]] = CATALOG) -> None:
    from vectors.io import save_vector
    from vectors.names import vector_path

    for name, (kind, seed) in names.items():
        save_vector(make_vector(world, name, kind=kind, seed=seed), vector_path(world.catalog, name))


def build_tiny_world(root: Path) -> TinyWorld:
    """Tiny model, SAE and the standard catalog under `root` (shared with the reliability tests)."""
    world = TinyWorld(
        model=save_tiny_model(root / "model"), sae=save_tiny_sae(root / "sae"), catalog=root / "vectors"
    )
    world.catalog.mkdir()
    write_catalog(world)
    return world


def load_engine(world: TinyWorld) -> LoadedModel:
    return LoadedModel.load(EngineConfig(model=str(world.model), sae=(str(world.sae),), device="cpu"))


@pytest.fixture(scope="session")
def tiny_world(tmp_path_factory: pytest.TempPathFactory) -> TinyWorld:
    return build_tiny_world(tmp_path_factory.mktemp("tiny-world"))


@pytest.fixture(scope="session")
def tiny_engine(tiny_world: TinyWorld) -> LoadedModel:
    """One engine for the whole session (tests run one at a time; each server gets its own scheduler)."""
    return load_engine(tiny_world)


def settings_for(world: TinyWorld, **overrides: Any) -> ServerSettings:
    base: dict[str, Any] = {
        "model": str(world.model),
        "sae": [str(world.sae)],
        "vectors": str(world.catalog),
        "device": "cpu",
        "catalog_poll_s": 0.2,
        "max_batch": 8,
        "max_configs_per_batch": 8,
        "max_new_tokens": 64,
        "default_max_new_tokens": 16,
    }
    base.update(overrides)
    return ServerSettings(**base)


@dataclass
class RunningServer:
    url: str
    state: ServerState
    app: Any

    def client(self, **kwargs: Any) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=60, **kwargs)


@contextlib.contextmanager
def run_server(
    settings: ServerSettings,
    engine: LoadedModel | None = None,
    wait_ready: bool = True,
    *,
    faults: bool = False,
    step_delay_s: float = 0.0,
) -> Iterator[RunningServer]:
    """The real app under uvicorn in a thread, on a free loopback port.

    `faults` (prompts with `[[fault:...]]` markers fail) and `step_delay_s` (a sleep per decode step) put a
    runner double (`engine_doubles`) under the engine for the server's lifetime.
    """
    with contextlib.ExitStack() as stack:
        if engine is not None and (faults or step_delay_s):
            engine.reserve(settings.max_batch, settings.max_neg_features)  # start-up then keeps this runner
            stack.enter_context(installed(engine, faults=faults, step_delay_s=step_delay_s))
        elif faults or step_delay_s:  # the server loads its own model: the double goes on the class
            double = runner_double(step_delay_s=step_delay_s)
            assert not faults, "fault markers need a preloaded engine (its tokenizer reads them)"
            stack.callback(setattr, LoadedModel, "runner_class", LoadedModel.runner_class)
            LoadedModel.runner_class = double
        yield from _serve(settings, engine, wait_ready)


def _serve(settings: ServerSettings, engine: LoadedModel | None, wait_ready: bool) -> Iterator[RunningServer]:
    state = ServerState(settings)
    app = create_app(settings, engine=engine, state=state)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(
        uvicorn.Config(app, log_level="warning", lifespan="on", timeout_graceful_shutdown=2)
    )
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    running = RunningServer(url=f"http://127.0.0.1:{port}", state=state, app=app)
    try:
        deadline = time.monotonic() + 60
        while not server.started and time.monotonic() < deadline:
            time.sleep(0.01)
        if wait_ready:
            wait_until_ready(running.url, settings.api_key.get_secret_value() if settings.api_key else None)
        yield running
    finally:
        server.should_exit = True
        thread.join(15)
        sock.close()


def wait_until_ready(url: str, api_key: str | None = None, timeout: float = 60) -> None:
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.HTTPError):
            last = httpx.get(f"{url}/ready", headers=headers, timeout=5)
            if last.status_code == 200:
                return
            if last.json().get("status") == "failed":
                raise RuntimeError(f"server failed to start: {last.text}")
        time.sleep(0.05)
    raise TimeoutError(f"server not ready: {last.text if last is not None else 'no answer'}")
