"""The vLLM tests' world: the prompts, the world's paths and its catalog (every steering term). The servers are
`tests.server.kit_server.run_server`'s. Imported by package path (`tests.vllm.kit_vllm`)."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from server.settings import ServerSettings
    from tests.server.kit_server import RunningServer

PROMPTS = ("At a wedding we eat", "In my country, the drink")


@dataclass(frozen=True)
class VllmWorld:
    root: Path
    model: Path
    sae: Path
    catalog: Path
    layer: int  # the SAE's layer
    num_layers: int


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


def copy_of_yapo(world: VllmWorld, name: str) -> Path:
    """t/yapo saved again under another name (a file no worker has read yet)."""
    from vectors.io import load_vector, save_vector
    from vectors.names import vector_path
    from vectors.vector import SteeringVector

    original = load_vector(vector_path(world.catalog, "t/yapo"))
    assert original.indices is not None and original.values is not None
    meta = original.meta.model_copy(update={"name": name})
    path = vector_path(world.catalog, name)
    save_vector(SteeringVector.sparse(meta, original.indices, original.values), path)
    return path


def server_settings(world: VllmWorld, **extra: Any) -> ServerSettings:
    """`steer serve`'s settings on the world (float32 CPU, 8 slots, no warm-up); `extra` picks the engine."""
    from server.settings import ServerSettings

    return ServerSettings(
        model=str(world.model),
        sae=[str(world.sae)],
        vectors=str(world.catalog),
        dtype="float32",
        device="cpu",
        max_batch=8,
        warmup=False,
        **extra,
    )


@contextlib.contextmanager
def vllm_and_native(world: VllmWorld, **vllm: Any) -> Iterator[tuple[RunningServer, RunningServer]]:
    """`steer serve --backend vllm` (its settings `vllm`; the front end rescans its catalog only when a test says
    so: `runtime.catalog.refresh()`) and a native server on the world, both under uvicorn in this process."""
    from tests.server.kit_server import run_server

    os.environ.pop("VLLM_ENABLE_V1_MULTIPROCESSING", None)  # the async engine runs its core in a process
    settings = server_settings(world, backend="vllm", catalog_poll_s=3600, **vllm)
    with (
        run_server(settings, ready_timeout=600) as served_by_vllm,
        run_server(server_settings(world), ready_timeout=600) as native,
    ):
        yield served_by_vllm, native
