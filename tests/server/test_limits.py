"""Limits and failure paths on the real server: 429, config cap, clamping, disconnects, faults, hot reload."""

from __future__ import annotations

import json
import threading
import time
from typing import Any

import httpx
import pytest

from server.engine.model import LoadedModel
from tests.server.kit_server import parse_sse, run_server, settings_for
from tests.server.kit_world import TinyWorld, make_vector

PROMPT = "At a wedding we eat"


def metric(client: httpx.Client, name: str) -> float:
    total = 0.0
    found = False
    for line in client.get("/metrics").text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            total += float(line.split()[-1])
            found = True
    assert found, name
    return total


def wait_for(predicate: Any, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.05)


@pytest.fixture(scope="module")
def slow(tiny_world: TinyWorld, tiny_engine: LoadedModel, tmp_path_factory: pytest.TempPathFactory) -> Any:
    """A server whose decode steps take >= 30 ms, one row per batch, one waiting request."""
    import shutil

    root = tmp_path_factory.mktemp("limits-catalog")
    shutil.copytree(tiny_world.catalog, root, dirs_exist_ok=True)
    world = TinyWorld(model=tiny_world.model, sae=tiny_world.sae, catalog=root)
    settings = settings_for(
        world,
        max_batch=2,
        max_queue=1,
        max_configs_per_batch=1,
        strength_policy="clamp",
        retry_after_s=3,
    )
    with run_server(settings, engine=tiny_engine, faults=True, step_delay_s=0.03) as running:
        running.world = world
        yield running


@pytest.fixture
def full_queue_server(tiny_world: TinyWorld, tiny_engine: LoadedModel) -> Any:
    """Two rows and one waiting request, with steps of >= 150 ms: a 64-token generation lasts >= 9.6 s, so a
    request refused "at once" is told apart from one that waited for room even on a machine with both cores busy."""
    settings = settings_for(tiny_world, max_batch=2, max_queue=1, retry_after_s=3)
    with run_server(settings, engine=tiny_engine, faults=True, step_delay_s=0.15) as running:
        yield running


def test_full_queue_answers_429_with_retry_after(full_queue_server: Any) -> None:
    slow = full_queue_server
    results: list[int] = []

    def call() -> None:
        with httpx.Client(base_url=slow.url, timeout=120) as c:
            results.append(c.post("/generate", json={"prompt": PROMPT, "max_new_tokens": 64}).status_code)

    # 2 rows run, 1 waits; the rest must be refused at once.
    threads = [threading.Thread(target=call) for _ in range(3)]
    for t in threads:
        t.start()
    with slow.client() as c:
        # Both rows running and one waiting: a lone queue_depth == 1 could be the second request
        # before its admission, with the third not yet sent.
        wait_for(lambda: (lambda b: (b["running"], b["queue_depth"]) == (2, 1))(c.get("/ready").json()))
        r = c.post("/generate", json={"prompt": PROMPT, "max_new_tokens": 5})
        assert r.status_code == 429 and r.headers["retry-after"] == "3"
        assert r.json()["error"]["type"] == "overloaded"
        # Refused at once, not after waiting for room: the 429 is back while the admitted rows (64 steps of
        # >= 150 ms each) are still generating. A relation, not a clock reading, with a margin of seconds.
        assert results == []
    for t in threads:
        t.join()
    assert results == [200, 200, 200]


def test_distinct_configs_per_batch_are_capped(slow: Any) -> None:
    """With max_configs_per_batch=1 two differently-steered requests both finish, never in one batch."""
    with slow.client() as c:
        before = (
            metric(c, 'steer_batch_steering_configs_bucket{le="1.0"}'),
            metric(c, "steer_batch_steering_configs_count"),
        )
        out: dict[str, int] = {}

        def call(name: str) -> None:
            with httpx.Client(base_url=slow.url, timeout=60) as cc:
                body = {"prompt": PROMPT, "max_new_tokens": 8, "steer": {name: 2.0}}
                out[name] = cc.post("/generate", json=body).status_code

        threads = [threading.Thread(target=call, args=(n,)) for n in ("demo/alpha", "demo/beta")]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert out == {"demo/alpha": 200, "demo/beta": 200}
        after = (
            metric(c, 'steer_batch_steering_configs_bucket{le="1.0"}'),
            metric(c, "steer_batch_steering_configs_count"),
        )
        steps = after[1] - before[1]
        assert steps >= 14 and after[0] - before[0] == steps  # every step had at most one config


def test_clamp_policy_reports_clamping(slow: Any) -> None:
    with slow.client() as c:
        r = c.post("/generate", json={"prompt": PROMPT, "max_new_tokens": 2, "steer": {"demo/alpha": 80.0}})
        assert r.status_code == 200
        (applied,) = r.json()["steer"]
        assert applied["strength"] == 50.0 and applied["requested_strength"] == 80.0 and applied["clamped"]


def test_stream_disconnect_frees_the_row(slow: Any) -> None:
    with slow.client() as c:
        before = metric(c, "steer_client_disconnects_total")
        with c.stream(
            "POST", "/generate", json={"prompt": PROMPT, "max_new_tokens": 60, "stream": True}
        ) as r:
            for line in r.iter_lines():
                if line.startswith("data:"):
                    break  # one token seen; leave
        wait_for(lambda: c.get("/ready").json()["running"] == 0, timeout=30)
        assert metric(c, "steer_client_disconnects_total") == before + 1


def test_non_stream_disconnect_frees_the_row(slow: Any) -> None:
    with slow.client() as c:
        before = metric(c, "steer_client_disconnects_total")
        with pytest.raises(httpx.ReadTimeout), httpx.Client(base_url=slow.url, timeout=0.3) as quick:
            quick.post("/generate", json={"prompt": PROMPT, "max_new_tokens": 60})
        wait_for(lambda: c.get("/ready").json()["running"] == 0, timeout=30)
        assert metric(c, "steer_client_disconnects_total") == before + 1


def test_injected_faults_fail_only_that_request(slow: Any) -> None:
    with slow.client() as c:
        err = c.post("/generate", json={"prompt": "boom [[fault:error]]", "max_new_tokens": 4})
        assert err.status_code == 500 and err.json()["error"]["type"] == "internal_error"
        oom = c.post("/generate", json={"prompt": "big [[fault:oom]]", "max_new_tokens": 4})
        assert oom.status_code == 503 and oom.json()["error"]["type"] == "out_of_memory"
        with c.stream("POST", "/generate", json={"prompt": "[[fault:error]]", "stream": True}) as r:
            events = parse_sse(list(r.iter_lines()))
        assert events[-1][0] == "error" and json.loads(events[-1][1])["error"]["code"] == 500
        assert c.get("/ready").status_code == 200
        assert c.post("/generate", json={"prompt": PROMPT, "max_new_tokens": 2}).status_code == 200
        assert metric(c, 'steer_request_failures_total{reason="oom"}') >= 1


def test_catalog_hot_reload_keeps_requests_in_flight(slow: Any) -> None:
    from vectors.io import save_vector
    from vectors.names import vector_path

    world: TinyWorld = slow.world
    path = vector_path(world.catalog, "fresh/new")
    with slow.client() as c:
        assert "fresh/new" not in [v["name"] for v in c.get("/vectors").json()["vectors"]]
        save_vector(make_vector(world, "fresh/new", seed=21), path)
        wait_for(lambda: "fresh/new" in [v["name"] for v in c.get("/vectors").json()["vectors"]], timeout=30)
        body = {"prompt": PROMPT, "max_new_tokens": 40, "steer": {"fresh/new": 2.0}}
        with c.stream("POST", "/generate", json={**body, "stream": True}) as r:
            lines = r.iter_lines()
            for line in lines:
                if line.startswith("data:"):
                    break
            path.unlink()  # removed while the request uses it
            wait_for(
                lambda: "fresh/new" not in [v["name"] for v in c.get("/vectors").json()["vectors"]],
                timeout=30,
            )
            events = parse_sse(list(lines))
        assert events[-1][0] == "done"
        assert json.loads(events[-1][1])["usage"]["completion_tokens"] == 40
        gone = c.post("/generate", json=body)
        assert gone.status_code == 422 and gone.json()["error"]["param"] == "steer.fresh/new"
        (world.catalog / "broken").mkdir(exist_ok=True)
        (world.catalog / "broken" / "half.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{")
        wait_for(lambda: c.get("/vectors").json()["skipped"] != [], timeout=30)
        assert c.get("/vectors").json()["skipped"][0]["path"] == "broken/half.safetensors"
        assert c.post("/generate", json={"prompt": PROMPT, "max_new_tokens": 2}).status_code == 200


def test_ready_reports_the_default_length_actually_applied(
    tiny_world: TinyWorld, tiny_engine: LoadedModel
) -> None:
    """A default above the cap is never used: a request without a length gets the cap, and /ready says so."""
    settings = settings_for(tiny_world, max_new_tokens=4, default_max_new_tokens=128)
    with run_server(settings, engine=tiny_engine) as running, running.client() as c:
        assert c.get("/ready").json()["limits"]["default_max_new_tokens"] == 4
        body = c.post("/generate", json={"prompt": PROMPT}).json()
        assert body["usage"]["completion_tokens"] <= 4 and body["finish_reason"] in ("length", "stop")
