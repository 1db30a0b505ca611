"""`steer serve --backend vllm` under uvicorn: the same API, the same greedy answers as the native engine.

One vLLM server (compiled: vLLM's CPU default, Dynamo + inductor; its start-up probe checks steering in that
graph) and one native server on the same world. /generate (JSON, compare, SSE) and /v1/completions (steered
model ids, log-probs) must answer as the native server does; /ready names the backend and its parallel layout;
a config over the plugin's negative-feature limit is a 422 naming the setting.

The server suites' API checks (`tests.server.kit_api`: catalog and model ids, unknown vector, JSON and SSE, `n`
and seeds, unsupported fields, /ready and /metrics) run here on both engines.

Failures: a vector file that changed or broke between the front end's catalog scan and a worker's read fails only
its request (409, naming the vector) and the engine serves on; a vLLM engine core that dies turns `/ready` to 503
"failed" and new requests to 503 (the last test: it kills the module's vLLM server).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.server.kit_api import CHECKS, UNSUPPORTED, Api, check_unsupported_is_a_422
from tests.server.kit_server import RunningServer
from tests.vllm.kit_vllm import PROMPTS, VllmWorld, copy_of_yapo, vllm_and_native


@pytest.fixture(scope="module")
def servers(vllm_world: VllmWorld) -> Iterator[tuple[RunningServer, RunningServer]]:
    with vllm_and_native(vllm_world, vllm_max_neg_features=3) as both:
        yield both


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


@pytest.fixture(params=["vllm", "native"])
def api(request: pytest.FixtureRequest, servers: tuple[RunningServer, RunningServer]) -> Iterator[Api]:
    """Each server as the shared API checks see it (`tests.server.kit_api`, which the native suites run too)."""
    served = dict(zip(("vllm", "native"), servers, strict=True))[request.param]
    with httpx.Client(base_url=served.url, timeout=120) as http:
        yield Api(http, model="culture-world", vector="t/yapo", prompt=PROMPTS[0], backend=request.param)


@pytest.mark.parametrize("check", sorted(CHECKS))
def test_api_behaves_alike_on_both_engines(api: Api, check: str) -> None:
    CHECKS[check](api)


@pytest.mark.parametrize(("route", "field", "value"), UNSUPPORTED)
def test_unsupported_fields_are_422s_on_both_engines(api: Api, route: str, field: str, value: Any) -> None:
    check_unsupported_is_a_422(api, route, field, value)


@pytest.mark.parametrize("how", ["changed", "broken"])
def test_a_vector_the_workers_cannot_load_fails_only_its_request(
    servers: tuple[RunningServer, RunningServer], vllm_world: VllmWorld, how: str
) -> None:
    from vectors.io import load_vector, save_vector
    from vectors.vector import SteeringVector

    vllm, _ = servers
    name = f"t/drift-{how}"
    path = copy_of_yapo(vllm_world, name)
    try:
        vllm.runtime.catalog.refresh()  # the front end admits the first version ...
        if how == "changed":  # ... and the workers, which have not read it yet, find another one
            v = load_vector(path)
            assert v.values is not None and v.indices is not None
            save_vector(SteeringVector.sparse(v.meta, v.indices, v.values * 2), path)
        else:
            path.write_bytes(b"not a vector")
        body = {"prompt": PROMPTS[0], "max_new_tokens": 4, "steer": {name: 2.0}}
        r = post(vllm, "/generate", body)
        assert r.status_code == 409, r.text
        error = r.json()["error"]
        assert error["type"] == "steering_unavailable" and name in error["message"], error
        if how == "changed":
            assert "fingerprint" in error["message"]
        # the engine serves on: readiness, a steered and an unsteered request
        assert httpx.get(f"{vllm.url}/ready").status_code == 200
        for steer in ({"t/yapo": 3.0}, {}):
            ok = post(vllm, "/generate", {"prompt": PROMPTS[1], "max_new_tokens": 4, "steer": steer})
            assert ok.status_code == 200, ok.text
    finally:
        path.unlink()
        vllm.runtime.catalog.refresh()


def test_a_dead_engine_core_is_not_ready_and_refuses_requests(
    servers: tuple[RunningServer, RunningServer],
) -> None:
    """Kills the vLLM engine core (as the kernel's OOM killer would): `/ready` says failed, requests get 503, and
    the runtime calls its fatal hook, which `steer serve` turns into exit code 1 (the hook's exit path is the one
    `tests/server/test_lifecycle.py::test_failed_start_exits_non_zero` checks on a real process).
    Last in this module: the module's vLLM server does not serve after it."""
    import psutil

    vllm, _ = servers
    fatal: list[str] = []
    vllm.runtime.on_fatal = fatal.append  # what `steer serve` sets to DrainingServer.fatal

    def is_engine_core(p: psutil.Process) -> bool:
        try:
            return p.status() != psutil.STATUS_ZOMBIE and "EngineCore" in " ".join([*p.cmdline(), p.name()])
        except psutil.Error:  # exited, or a zombie of an earlier module's engine not reaped yet
            return False

    cores = [p for p in psutil.Process().children(recursive=True) if is_engine_core(p)]
    assert len(cores) == 1, cores
    cores[0].kill()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        ready = httpx.get(f"{vllm.url}/ready", timeout=5)
        if ready.status_code == 503:
            break
        time.sleep(0.2)
    assert ready.status_code == 503 and ready.json()["status"] == "failed", ready.text
    assert "vLLM" in ready.json()["detail"]
    r = post(vllm, "/generate", {"prompt": PROMPTS[0], "max_new_tokens": 4})
    assert r.status_code == 503, r.text
    assert len(fatal) == 1 and fatal[0].startswith("engine failed"), fatal
