"""The real model's test world, shared by the native suite (`tests/real/test_gemma3_serve.py`) and the vLLM
engine's (`tests/vllm/test_gemma3.py`): Gemma 3 270M from its package (converted once and cached,
`trainer.gemma3.convert`), a random sae-lens SAE at layer 6 scaled to its residual stream, random vectors (sparse
with both signs, dense), and rows of differently steered prompts served all at once. Nothing depends on training.
"""

from __future__ import annotations

import concurrent.futures
from pathlib import Path
from typing import Any

import httpx
import torch

from tests.server.kit_world import TinyWorld
from trainer.gemma3.convert import converted_model
from vectors.io import save_vector
from vectors.metadata import ModelRef, SaeRef, VectorMetadata, dense_hook_name
from vectors.names import vector_path
from vectors.vector import SteeringVector

LAYER, D_MODEL, D_SAE, N_LAYERS = 6, 640, 1024, 18
MAX_NEW = 8
RESIDUAL_NORM = 3800.0  # |h| at the output of block 6 on English text (measured on this model)
MODEL_REF = ModelRef(name="gemma-3-270m", hidden_size=D_MODEL, num_layers=N_LAYERS)
LONG = "The old market of the city is open every day. " * 56  # ~560 tokens: past the 512-token window
PROMPTS = [
    "The capital of France is",
    "I am from Morocco. At a wedding we eat",
    LONG + "In the evening the traders",
    "In my country, the sport we watch is",
]


def save_random_sae(out: Path) -> Path:
    """A random standard SAE on block 6's output, scaled to this model's residual stream: codes of order 1 on real
    activations, decoder rows of norm ~1000, so that a few features of strength 1-3 move the text."""
    from sae_lens import StandardSAE, StandardSAEConfig
    from sae_lens.saes.sae import SAEMetadata

    torch.manual_seed(0)
    cfg = StandardSAEConfig(
        d_in=D_MODEL,
        d_sae=D_SAE,
        metadata=SAEMetadata(hook_name=f"model.layers.{LAYER}", model_name="gemma-3-270m"),
    )
    sae = StandardSAE(cfg)
    with torch.no_grad():
        sae.W_enc.copy_(torch.randn_like(sae.W_enc) / RESIDUAL_NORM)
        sae.W_dec.copy_(torch.randn_like(sae.W_dec) * 1000.0 / D_MODEL**0.5)
        sae.b_enc.zero_()
    out.mkdir(parents=True, exist_ok=True)
    sae.save_model(str(out))
    return out


def random_vector(name: str, sae: Path, seed: int, *, kind: str) -> SteeringVector:
    """`mixed`: 8 SAE features of both signs; `dense`: a residual-stream vector of norm ~1500."""
    g = torch.Generator().manual_seed(seed)
    common: dict[str, Any] = {"name": name, "layer": LAYER, "model": MODEL_REF, "strength_range": (-4.0, 4.0)}
    if kind == "dense":
        meta = VectorMetadata(method="bipo", space="dense", hook_name=dense_hook_name(LAYER), **common)
        return SteeringVector.dense_vector(meta, torch.randn(D_MODEL, generator=g) * 1500.0 / D_MODEL**0.5)
    ref = SaeRef(source=str(sae), d_sae=D_SAE, architecture="standard")
    meta = VectorMetadata(method="yapo", space="sae", hook_name=f"model.layers.{LAYER}", sae=ref, **common)
    idx = torch.randperm(D_SAE, generator=g)[:8]
    vals = torch.rand(8, generator=g) * 2 + 1
    vals[::2] *= -1
    return SteeringVector.sparse(meta, idx, vals)


def real_world(root: Path) -> TinyWorld:
    """The converted model with a random SAE and three vectors (`real/mixed`, `real/other`, `real/dense`) under
    `root`."""
    folder, conversion = converted_model()
    assert conversion.sha256.startswith(folder.name)
    world = TinyWorld(model=folder, sae=save_random_sae(root / "sae"), catalog=root / "vectors")
    for name, seed, kind in (
        ("real/mixed", 1, "mixed"),
        ("real/other", 2, "mixed"),
        ("real/dense", 3, "dense"),
    ):
        save_vector(random_vector(name, world.sae, seed, kind=kind), vector_path(world.catalog, name))
    return world


# (prompt, request steer) per row: unsteered, a catalog YaPO-style vector, two vectors composed (sparse + dense,
# one negative), an ad-hoc SAE feature.
ROWS: list[tuple[str, dict[str, float]]] = [
    (PROMPTS[0], {}),
    (PROMPTS[1], {"real/mixed": 1.0}),
    (PROMPTS[2], {"real/other": 1.5, "real/dense": -1.0}),
    (PROMPTS[3], {"sae:17": 3.0}),
]


def served(url: str) -> list[str]:
    """Every row's text, all requests in flight at once (one batch of differently steered rows)."""

    def one(row: tuple[str, dict[str, float]]) -> str:
        prompt, steer = row
        body = {"prompt": prompt, "steer": steer, "max_new_tokens": MAX_NEW}
        r = httpx.post(f"{url}/generate", json=body, timeout=300)
        assert r.status_code == 200, r.text
        return str(r.json()["text"])

    with concurrent.futures.ThreadPoolExecutor(len(ROWS)) as pool:
        return list(pool.map(one, ROWS))
