"""`steer serve --backend vllm` under uvicorn: the same API, the same greedy answers as the native engine.

One vLLM server (compiled: vLLM's CPU default, Dynamo + inductor; its start-up probe checks steering in that
graph) and one native server on the same world. /generate (JSON, compare, SSE) and /v1/completions (steered
model ids, log-probs) must answer as the native server does; /ready names the backend and its parallel layout;
a config over the plugin's negative-feature limit is a 422 naming the setting.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from server.settings import ServerSettings
from tests.server.kit_server import RunningServer, run_server
from tests.vllm.kit_vllm import PROMPTS, VllmWorld


def settings(world: VllmWorld, **extra: Any) -> ServerSettings:
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


@pytest.fixture(scope="module")
def servers(vllm_world: VllmWorld) -> Iterator[tuple[RunningServer, RunningServer]]:
    os.environ.pop("VLLM_ENABLE_V1_MULTIPROCESSING", None)  # the async engine runs its core in a process
    with (
        run_server(settings(vllm_world, backend="vllm", vllm_max_neg_features=3), ready_timeout=600) as vllm,
        run_server(settings(vllm_world), ready_timeout=600) as native,
    ):
        yield vllm, native


def post(server: RunningServer, path: str, body: dict[str, Any]) -> httpx.Response:
    return httpx.post(f"{server.url}{path}", json=body, timeout=120)


def test_ready_names_the_backend_and_its_layout(servers: tuple[RunningServer, RunningServer]) -> None:
    vllm, native = servers
    engine = httpx.get(f"{vllm.url}/ready").json()["engine"]
    assert engine["backend"] == "vllm"
    assert engine["parallel"]["tensor_parallel_size"] == 1
    assert httpx.get(f"{native.url}/ready").json()["engine"]["backend"] == "native"
    metrics = httpx.get(f"{vllm.url}/metrics").text.splitlines()
    (info,) = [line for line in metrics if line.startswith("steer_engine_info{")]
    assert 'backend="vllm"' in info and 'tensor_parallel_size="1"' in info and info.endswith(" 1.0")


@pytest.mark.parametrize(
    "steer",
    [
        {},
        {"t/yapo": 3.0},
        {"t/dense": 3.0, "t/yapo2": 2.0},
        {"sae:7": 8.0},
        {"t/gen": 5.0},
        {"t/prompt": 5.0},
    ],
)
def test_generate_equals_native(
    servers: tuple[RunningServer, RunningServer], steer: dict[str, float]
) -> None:
    vllm, native = servers
    for prompt in PROMPTS:
        body = {"prompt": prompt, "max_new_tokens": 10, "steer": steer, "compare": bool(steer)}
        a, b = post(vllm, "/generate", body), post(native, "/generate", body)
        assert a.status_code == b.status_code == 200, a.text
        ja, jb = a.json(), b.json()
        assert (ja["text"], ja.get("unsteered_text")) == (jb["text"], jb.get("unsteered_text"))
        assert ja["usage"] == jb["usage"]


def test_streamed_text_equals_the_json_answer(servers: tuple[RunningServer, RunningServer]) -> None:
    vllm, _ = servers
    body = {"prompt": PROMPTS[0], "max_new_tokens": 8, "steer": {"t/yapo": 3.0}}
    whole = post(vllm, "/generate", body).json()["text"]
    parts = []
    with httpx.stream("POST", f"{vllm.url}/generate", json={**body, "stream": True}, timeout=120) as r:
        for line in r.iter_lines():
            if line.startswith("data: ") and '"text"' in line:
                parts.append(json.loads(line[6:])["text"])
    assert "".join(parts) == whole


def test_completions_equal_native(servers: tuple[RunningServer, RunningServer]) -> None:
    vllm, native = servers
    for model in ("culture-world", "culture-world:t/yapo@3"):
        body = {"model": model, "prompt": PROMPTS[1], "max_tokens": 8, "temperature": 0, "logprobs": 2}
        a, b = post(vllm, "/v1/completions", body), post(native, "/v1/completions", body)
        assert a.status_code == b.status_code == 200, a.text
        ca, cb = a.json()["choices"][0], b.json()["choices"][0]
        assert ca["text"] == cb["text"]
        assert ca["logprobs"]["tokens"] == cb["logprobs"]["tokens"]
        for x, y in zip(ca["logprobs"]["token_logprobs"], cb["logprobs"]["token_logprobs"], strict=True):
            assert abs(x - y) < 1e-3
    seeded = {
        "model": "culture-world",
        "prompt": PROMPTS[0],
        "max_tokens": 6,
        "n": 2,
        "seed": 5,
        "temperature": 0.9,
    }
    first, again = post(vllm, "/v1/completions", seeded).json(), post(vllm, "/v1/completions", seeded).json()
    assert len(first["choices"]) == 2
    assert [c["text"] for c in first["choices"]] == [c["text"] for c in again["choices"]]  # seeds reproduce


def test_too_many_negative_features_is_a_422_naming_the_setting(
    servers: tuple[RunningServer, RunningServer],
) -> None:
    vllm, _ = servers
    r = post(
        vllm,
        "/generate",
        {"prompt": PROMPTS[0], "max_new_tokens": 4, "steer": {"t/yapo": 1.0, "t/yapo2": 1.0}},
    )
    assert r.status_code == 422, r.text
    assert "STEER_VLLM_MAX_NEG_FEATURES" in r.text
