"""Faults while serving: bad vector files appearing mid-request, a vector replaced in use, disconnects while
queued, a failing request next to healthy neighbours (at prefill and inside a decode step), repeated
out-of-memory, and the request deadline.

Covered in tests/server and not repeated here: a truncated file is skipped and a vector removed in use
(test_limits::test_catalog_hot_reload_keeps_requests_in_flight), disconnect mid-stream and mid-request
(test_stream_disconnect_frees_the_row, test_non_stream_disconnect_frees_the_row), injected error/OOM → 500/503
with the server ready (test_injected_faults_fail_only_that_request), SIGTERM drain
(test_lifecycle::test_sigterm_drains_in_flight_requests).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch
from safetensors.torch import save

from server.engine.model import LoadedModel
from tests.reliability.kit_http import PROMPT, idle, metric, private_copy, wait_for
from tests.server.kit_server import parse_sse, run_server, settings_for
from tests.server.kit_world import make_vector

STEER = {"demo/alpha": 3.0}
FAILED = 'steer_request_failures_total{reason="error"}'


@pytest.fixture(scope="module")
def server(
    rel_world: Any, rel_engine: LoadedModel, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Any]:
    world = private_copy(rel_world, tmp_path_factory.mktemp("faults-catalog"))
    settings = settings_for(
        world,
        max_batch=4,
        max_queue=4,
        max_configs_per_batch=4,
        catalog_poll_s=0.1,
        request_timeout_s=60,
    )
    with run_server(settings, engine=rel_engine, faults=True, step_delay_s=0.02) as running:
        running.world = world
        yield running


@pytest.fixture
def client(server: Any) -> Iterator[httpx.Client]:
    with server.client() as c:
        yield c
        wait_for(lambda: idle(c), what="idle after the test")


def solo(client: httpx.Client, **body: Any) -> str:
    r = client.post("/generate", json={"prompt": PROMPT, "max_new_tokens": 30, **body})
    assert r.status_code == 200, r.text
    return r.json()["text"]


class Stream:
    """A streamed /generate read in a thread: first token seen → `started`; events collected in `events`."""

    def __init__(self, url: str, body: dict[str, Any]) -> None:
        self.started = threading.Event()
        self.events: list[tuple[str | None, str]] = []
        self.thread = threading.Thread(target=self._run, args=(url, body), daemon=True)
        self.thread.start()

    def _run(self, url: str, body: dict[str, Any]) -> None:
        lines: list[str] = []
        with (
            httpx.Client(base_url=url, timeout=60) as c,
            c.stream("POST", "/generate", json={**body, "stream": True}) as r,
        ):
            for line in r.iter_lines():
                lines.append(line)
                if line.startswith("data:"):
                    self.started.set()
        self.events = parse_sse(lines)
        self.started.set()

    def result(self) -> str:
        self.thread.join(60)
        assert self.events and self.events[-1][0] == "done", self.events[-3:]
        return "".join(json.loads(d)["text"] for e, d in self.events if e == "token")


def bad_files(world: Any) -> dict[str, bytes]:
    """relative path -> bytes of a file the catalog must skip."""
    from vectors.io import to_bytes
    from vectors.metadata import ModelRef, SaeRef

    good = make_vector(world, "bad/name", seed=11)
    meta = {"steer": good.meta.to_json()}
    nan_values = good.values.clone()
    nan_values[0] = float("nan")
    dense = make_vector(world, "bad/shape", kind="dense", seed=12)
    other_model = make_vector(world, "bad/model", seed=13).with_meta(
        model=ModelRef(name="other", hidden_size=128, num_layers=4)
    )
    other_sae = make_vector(world, "bad/sae", seed=14).with_meta(
        sae=SaeRef(source="other-sae", d_sae=512, architecture="standard")
    )
    return {
        "bad/corrupt.safetensors": torch.randint(0, 256, (4096,), dtype=torch.uint8).numpy().tobytes(),
        "bad/truncated.safetensors": to_bytes(good)[:-20],
        "bad/empty.safetensors": b"",
        "bad/shape.safetensors": save({"vector": torch.randn(32)}, metadata={"steer": dense.meta.to_json()}),
        "bad/model.safetensors": to_bytes(other_model),
        "bad/sae.safetensors": to_bytes(other_sae),
        "bad/nan.safetensors": save({"indices": good.indices, "values": nan_values}, metadata=meta),
        "bad/shadow.safetensors": to_bytes(
            make_vector(world, "demo/alpha", seed=15)
        ),  # claims another's name
    }


def test_bad_files_dropped_in_mid_request_are_skipped_with_reasons(server: Any, client: httpx.Client) -> None:
    expected = solo(client, steer=STEER)
    stream = Stream(server.url, {"prompt": PROMPT, "max_new_tokens": 30, "steer": STEER})
    assert stream.started.wait(30)
    files = bad_files(server.world)
    for rel, data in files.items():
        path = Path(server.world.catalog) / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)

    def skipped() -> dict[str, str]:
        return {s["path"]: s["reason"] for s in client.get("/vectors").json()["skipped"]}

    wait_for(lambda: set(files) <= set(skipped()), timeout=10, what="every bad file skipped")
    assert stream.result() == expected  # the request in flight did not notice
    reasons = skipped()
    assert all(reasons[rel] for rel in files), reasons
    assert "nan" in reasons["bad/nan.safetensors"].lower() or "finite" in reasons["bad/nan.safetensors"]
    assert "name" in reasons["bad/shadow.safetensors"]
    names = {v["name"] for v in client.get("/vectors").json()["vectors"]}
    assert not any(n.startswith("bad/") for n in names)
    assert solo(client, steer=STEER) == expected  # demo/alpha is still the real one, not the shadow
    r = client.post("/generate", json={"prompt": PROMPT, "steer": {"bad/nan": 1.0}})
    assert r.status_code == 422 and r.json()["error"]["type"] == "unknown_vector"


def test_vector_replaced_while_in_use(server: Any, client: httpx.Client) -> None:
    from vectors.io import save_vector
    from vectors.names import vector_path

    path = vector_path(server.world.catalog, "fresh/swap")
    old = make_vector(server.world, "fresh/swap", kind="positive", seed=31)
    new = make_vector(server.world, "fresh/swap", kind="positive", seed=32)
    save_vector(old, path)
    wait_for(lambda: client.get("/vectors/fresh/swap").status_code == 200, what="vector loaded")
    body = {"prompt": PROMPT, "max_new_tokens": 30, "steer": {"fresh/swap": 5.0}}
    expected_old = solo(client, **{k: v for k, v in body.items() if k != "prompt"})
    stream = Stream(server.url, body)
    assert stream.started.wait(30)
    save_vector(new, path)
    top = int(new.indices[new.values.abs().argmax()])
    wait_for(
        lambda: client.get("/vectors/fresh/swap").json()["top_features"][0]["index"] == top,
        what="replacement loaded",
    )
    assert stream.result() == expected_old  # resolved at admission, kept to the end


def test_disconnect_while_queued_never_runs(server: Any, client: httpx.Client) -> None:
    long = {"prompt": PROMPT, "max_new_tokens": 60}
    runners = [Stream(server.url, long) for _ in range(4)]  # all 4 rows busy
    for s in runners:
        assert s.started.wait(30)
    before = metric(client, "steer_client_disconnects_total")
    with (
        httpx.Client(base_url=server.url, timeout=60) as c,
        c.stream("POST", "/generate", json={**long, "stream": True}) as r,
    ):
        assert r.status_code == 200
        wait_for(lambda: client.get("/ready").json()["queue_depth"] == 1, what="queued")
    wait_for(lambda: client.get("/ready").json()["queue_depth"] == 0, timeout=5, what="dequeued")
    for s in runners:
        s.result()
    assert metric(client, "steer_client_disconnects_total") == before + 1


def test_failing_request_next_to_healthy_neighbours(server: Any, client: httpx.Client) -> None:
    bodies = [{"steer": {"demo/alpha": 3.0}}, {"steer": {"demo/beta": 2.0}}, {}]
    expected = [solo(client, **b) for b in bodies]
    neighbours = [Stream(server.url, {"prompt": PROMPT, "max_new_tokens": 30, **b}) for b in bodies]
    bad = client.post("/generate", json={"prompt": "x [[fault:error]]", "max_new_tokens": 30})
    assert bad.status_code == 500 and bad.json()["error"]["type"] == "internal_error"
    assert [s.result() for s in neighbours] == expected
    assert client.get("/ready").status_code == 200


class StepGate:
    """Holds the engine's decode steps until `open()`: requests pile up in a known batch, no sleeps involved."""

    def __init__(self, engine: LoadedModel) -> None:
        self.real = engine.runner.decode
        self.opened = threading.Event()

    def decode(self, start: int, n: int) -> Any:
        assert self.opened.wait(60), "gate never opened"
        return self.real(start, n)

    def open(self) -> None:
        self.opened.set()


def test_decode_step_failure_fails_only_the_culprits(
    server: Any, client: httpx.Client, rel_engine: LoadedModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`[[fault:step]]` raises in every decode step its row is in, after the shared cache was updated in place.
    The two neighbours in that step are retried alone and return their solo texts; the culprits
    (one JSON, one SSE) get their 500; the failure is counted and the server stays ready."""
    bodies = [{"prompt": PROMPT, "max_new_tokens": 30, **b} for b in ({"steer": STEER}, {})]
    expected = []
    for b in bodies:  # each runs its 30 tokens, so none can end before the culprits join it
        r = client.post("/generate", json=b)
        assert r.json()["finish_reason"] == "length", r.text
        expected.append(r.json()["text"])
    growth = {"steer_decode_step_failures_total": 1, "steer_rows_rescued_total": 2, FAILED: 2}
    before = {name: metric(client, name) for name in growth}

    def rows_in() -> int:
        ready = client.get("/ready").json()
        return ready["running"] + ready["queue_depth"]

    gate = StepGate(rel_engine)
    monkeypatch.setattr(rel_engine.runner, "decode", gate.decode)
    culprit = {"prompt": "x [[fault:step]]", "max_new_tokens": 30}
    try:
        neighbours = [Stream(server.url, b) for b in bodies]
        wait_for(lambda: rows_in() == 2, what="both neighbours in, no step done")
        sse_culprit = Stream(server.url, culprit)
        answers: list[httpx.Response] = []
        json_culprit = threading.Thread(
            target=lambda: answers.append(httpx.post(f"{server.url}/generate", json=culprit, timeout=60))
        )
        json_culprit.start()
        wait_for(lambda: rows_in() == 4, what="the culprits queued behind the held step")
    finally:
        gate.open()
    assert [s.result() for s in neighbours] == expected
    json_culprit.join(60)
    assert answers[0].status_code == 500, answers[0].text
    assert answers[0].json()["error"]["message"] == "generation failed (InjectedFault)"
    sse_culprit.thread.join(60)
    kind, data = sse_culprit.events[-1]
    assert kind == "error" and json.loads(data)["error"]["code"] == 500, sse_culprit.events[-3:]
    assert {name: metric(client, name) - before[name] for name in growth} == growth
    assert client.get("/ready").status_code == 200


def test_repeated_oom_frees_memory_and_stays_ready(client: httpx.Client) -> None:
    for _ in range(5):  # warm the paths first
        client.post("/generate", json={"prompt": "[[fault:oom]]", "max_new_tokens": 4})
    rss = metric(client, "process_resident_memory_bytes")
    ooms = metric(client, 'steer_request_failures_total{reason="oom"}')
    for _ in range(40):
        r = client.post("/generate", json={"prompt": "big [[fault:oom]]", "max_new_tokens": 4})
        assert r.status_code == 503 and r.json()["error"]["type"] == "out_of_memory"
    assert metric(client, 'steer_request_failures_total{reason="oom"}') == ooms + 40
    assert metric(client, "process_resident_memory_bytes") <= rss * 1.05
    assert idle(client) and client.get("/ready").status_code == 200
    assert client.post("/generate", json={"prompt": PROMPT, "max_new_tokens": 2}).status_code == 200


def test_request_timeout_answers_504_and_frees_the_rows(rel_world: Any, rel_engine: LoadedModel) -> None:
    settings = settings_for(rel_world, request_timeout_s=0.5, catalog_poll_s=30)
    with run_server(settings, engine=rel_engine, step_delay_s=0.05) as srv, srv.client() as c:
        before = metric(c, 'steer_request_failures_total{reason="timeout"}')
        tokens_before = metric(c, "steer_generation_tokens_total")
        body = {"prompt": PROMPT, "max_new_tokens": 60, "compare": True}
        r = c.post("/generate", json=body)
        assert r.status_code == 504 and r.json()["error"]["type"] == "timeout", r.text
        assert r.headers["retry-after"]
        with c.stream("POST", "/generate", json={**body, "stream": True}) as s:
            events = parse_sse(list(s.iter_lines()))
        assert events[-1][0] == "error" and json.loads(events[-1][1])["error"]["code"] == 504
        with c.stream(
            "POST",
            "/v1/completions",
            json={"model": "model", "prompt": PROMPT, "max_tokens": 60, "temperature": 0, "stream": True},
        ) as s:
            data = [line for line in s.iter_lines() if line.startswith("data:")]
        assert '"code":504' in data[-2].replace(" ", "") and data[-1] == "data: [DONE]"
        wait_for(lambda: idle(c), what="rows freed after the deadline")
        # Freed at the deadline, not when done: 5 rows (two compare pairs and one completion) of 60 tokens
        # would make 300; at >= 50 ms a step a 0.5 s deadline allows ~10 each, and a busy machine only fewer.
        assert metric(c, "steer_generation_tokens_total") - tokens_before < 5 * 60 / 2
        assert metric(c, 'steer_request_failures_total{reason="timeout"}') == before + 3
        # The server still generates. A short request fits the 0.5 s deadline on a quiet machine; with both cores
        # busy even one token can miss it, so a few tries are allowed, each a clean 504 if it misses.
        for _ in range(10):
            ok = c.post("/generate", json={"prompt": PROMPT, "max_new_tokens": 1})
            if ok.status_code == 200:
                break
            assert ok.status_code == 504 and ok.json()["error"]["type"] == "timeout", ok.text
        assert ok.status_code == 200
