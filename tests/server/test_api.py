"""The real server on loopback: /generate, catalog, OpenAI routes, errors, isolation under concurrency."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import openai
import pytest

from server.engine.model import LoadedModel
from server.middleware import route_table
from tests.server.kit_api import (
    Api,
    check_catalog_and_model_ids,
    check_ready_and_metrics_name_the_engine,
    check_stream_matches_json,
    check_unknown_vector_is_a_422,
)
from tests.server.kit_server import run_server, settings_for
from tests.server.kit_world import CATALOG, TinyWorld, make_vector

PROMPT = "At a wedding we eat"


@pytest.fixture(scope="module")
def world(tiny_world: TinyWorld, tmp_path_factory: pytest.TempPathFactory) -> TinyWorld:
    """A private copy of the catalog, plus one vector with apply=generation, one corrupt file and one symlink to a
    valid vector outside the catalog."""
    from vectors.io import save_vector
    from vectors.names import vector_path

    root = tmp_path_factory.mktemp("api-catalog")
    shutil.copytree(tiny_world.catalog, root, dirs_exist_ok=True)
    w = TinyWorld(model=tiny_world.model, sae=tiny_world.sae, catalog=root)
    save_vector(make_vector(w, "demo/late", seed=9, apply="generation"), vector_path(root, "demo/late"))
    (root / "bad").mkdir()
    (root / "bad" / "corrupt.safetensors").write_bytes(b"\x00\x01 not a safetensors file")
    outside = tmp_path_factory.mktemp("api-outside")
    save_vector(make_vector(w, "demo/leak", seed=10), vector_path(outside, "demo/leak"))
    vector_path(root, "demo/leak").symlink_to(vector_path(outside, "demo/leak"))
    return w


@pytest.fixture(scope="module")
def server(world: TinyWorld, tiny_engine: LoadedModel) -> Iterator[Any]:
    settings = settings_for(world, max_body_bytes=64 * 1024, model_name="tiny")
    with run_server(settings, engine=tiny_engine) as running:
        yield running


@pytest.fixture(scope="module")
def client(server: Any) -> Iterator[httpx.Client]:
    with server.client() as c:
        yield c


@pytest.fixture(scope="module")
def api(client: httpx.Client) -> Api:
    """The checks every engine must pass (`tests.server.kit_api`; tests/vllm runs them on the vLLM engine)."""
    return Api(client, model="tiny", vector="culture/one", prompt=PROMPT)


def gen(client: httpx.Client, **body: Any) -> dict[str, Any]:
    r = client.post("/generate", json={"prompt": PROMPT, **body})
    assert r.status_code == 200, r.text
    return r.json()


# --- basics -------------------------------------------------------------------------------------------------


def test_health_and_ready(client: httpx.Client, api: Api) -> None:
    assert client.get("/health").json() == {"status": "ok"}
    ready = client.get("/ready")
    assert ready.status_code == 200
    assert ready.json()["status"] == "ready" and ready.json()["limits"]["max_batch"] == 8
    check_ready_and_metrics_name_the_engine(api)


def test_generate_reports_steering(client: httpx.Client) -> None:
    plain = gen(client)
    steered = gen(client, steer={"demo/alpha": 4.0})
    assert plain["steer"] == [] and plain["finish_reason"] == "length"
    assert plain["usage"]["completion_tokens"] == 16 and plain["usage"]["total_tokens"] > 16
    assert steered["text"] != plain["text"]
    (applied,) = steered["steer"]
    assert applied == {
        "name": "demo/alpha",
        "strength": 4.0,
        "requested_strength": 4.0,
        "clamped": False,
        "layer": 2,
        "method": "yapo",
        "space": "sae",
        "apply": "both",
    }


def test_compare_and_strength_zero(client: httpx.Client) -> None:
    plain = gen(client)
    both = gen(client, steer={"demo/beta": 5.0}, compare=True)
    assert both["unsteered_text"] == plain["text"]
    assert both["text"] != plain["text"]
    zero = gen(client, steer={"demo/beta": 0.0})
    assert zero["text"] == plain["text"] and zero["steer"][0]["strength"] == 0.0


def test_adhoc_feature_and_apply_override(client: httpx.Client) -> None:
    adhoc = gen(client, steer={"sae:7": 30.0})
    assert adhoc["steer"][0]["method"] == "manual" and adhoc["steer"][0]["layer"] == 2
    assert gen(client, steer={"sae:2:7": 30.0})["text"] == adhoc["text"]
    # The first token comes from the prompt forward: steered by "prompt"/"both", not by "generation".
    first = {
        a: gen(client, steer={"demo/alpha": 4.0}, apply=a, max_new_tokens=1)
        for a in ("prompt", "generation", "both")
    }
    assert [first[a]["steer"][0]["apply"] for a in first] == ["prompt", "generation", "both"]
    plain = gen(client, max_new_tokens=1)["text"]
    assert first["both"]["text"] != plain
    assert first["prompt"]["text"] == first["both"]["text"]
    assert first["generation"]["text"] == plain


def test_chat_messages(client: httpx.Client) -> None:
    r = client.post(
        "/generate", json={"messages": [{"role": "user", "content": "Hello"}], "max_new_tokens": 5}
    )
    assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 5


# --- errors -------------------------------------------------------------------------------------------------

ERRORS = [
    ({"prompt": "x", "stength": 8}, 422, "stength"),
    ({"prompt": "x", "steer": {"nope/missing": 1.0}}, 422, "steer.nope/missing"),
    ({"prompt": "x", "steer": {"../../etc/passwd": 1.0}}, 422, "steer.../../etc/passwd"),
    ({"prompt": "x", "steer": {"demo/alpha": 99.0}}, 422, "steer.demo/alpha"),
    ({"prompt": "x", "steer": {f"sae:{i}": 1.0 for i in range(9)}}, 422, "steer"),
    ({"prompt": "x", "steer": {"sae:999999": 1.0}}, 422, "steer.sae:999999"),
    ({"prompt": "x", "steer": {"sae:1:3": 1.0}}, 422, "steer.sae:1:3"),
    ({"prompt": "x", "steer": {"sae:abc": 1.0}}, 422, "steer.sae:abc"),
    ({"prompt": "x", "steer": {"demo/alpha": 1.0, "demo/late": 1.0}}, 422, "steer"),
    ({"prompt": "x", "steer": {"demo/alpha": "strong"}}, 422, "steer.demo/alpha"),
    ({"prompt": "x", "max_new_tokens": 0}, 422, "max_new_tokens"),
    ({"prompt": "x", "max_new_tokens": 65}, 422, "max_new_tokens"),
    ({"prompt": "hello " * 300}, 422, "prompt"),
    ({"prompt": "x", "temperature": -1}, 422, "temperature"),
    ({"prompt": "x", "top_p": 0}, 422, "top_p"),
    ({"prompt": "x", "stop": ["a", "b", "c", "d", "e"]}, 422, "stop"),
    ({"prompt": "x", "stop": [""]}, 422, "stop"),
    ({"prompt": "x", "apply": "always"}, 422, "apply"),
    ({"messages": [{"role": "wizard", "content": "x"}]}, 422, "messages.0.role"),
    ({"messages": []}, 422, "messages"),
    ({"prompt": "x", "messages": [{"role": "user", "content": "x"}]}, 422, "body"),
    ({}, 422, "body"),
]


@pytest.mark.parametrize(("body", "status", "param"), ERRORS, ids=[str(i) for i in range(len(ERRORS))])
def test_request_errors_name_the_field(
    client: httpx.Client, body: dict[str, Any], status: int, param: str
) -> None:
    r = client.post("/generate", json=body)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert err["param"] == param, err
    assert err["code"] == status and err["message"]


def test_context_limit(client: httpx.Client, tiny_engine: LoadedModel) -> None:
    words = 1
    while len(tiny_engine.encode(prompt="wedding " * words)) < 230:
        words += 1
    r = client.post("/generate", json={"prompt": "wedding " * words, "max_new_tokens": 40})
    assert r.status_code == 422
    err = r.json()["error"]
    assert err["param"] == "max_new_tokens" and "256" in err["message"] and "40" in err["message"]
    ok = client.post("/generate", json={"prompt": "wedding " * words, "max_new_tokens": 2})
    assert ok.status_code == 200


def test_raw_body_errors(client: httpx.Client) -> None:
    nan = client.post(
        "/generate",
        content=b'{"prompt": "x", "steer": {"demo/alpha": NaN}}',
        headers={"content-type": "application/json"},
    )
    assert nan.status_code == 422 and nan.json()["error"]["param"] == "steer.demo/alpha"
    broken = client.post("/generate", content=b'{"prompt": ', headers={"content-type": "application/json"})
    assert broken.status_code == 422 and "JSON" in broken.json()["error"]["message"]
    big = client.post("/generate", json={"prompt": "x" * 70_000})
    assert big.status_code == 413 and big.json()["error"]["type"] == "request_too_large"


REPEATED_KEYS = [
    (b'{"prompt": "a", "prompt": "b"}', "prompt"),
    (b'{"prompt": "x", "steer": {"demo/alpha": 1, "demo/alpha": 2}}', "steer.demo/alpha"),
    (b'{"messages": [{"role": "user", "content": "x", "content": "y"}]}', "messages.0.content"),
]


def post_json(client: httpx.Client, path: str, raw: bytes) -> httpx.Response:
    return client.post(path, content=raw, headers={"content-type": "application/json"})


def test_duplicate_json_keys_are_rejected(client: httpx.Client, server: Any) -> None:
    for raw, param in REPEATED_KEYS:
        r = post_json(client, "/generate", raw)
        assert r.status_code == 422, r.text
        err = r.json()["error"]
        assert err["param"] == param and err["type"] == "invalid_request_error", err
        assert "duplicate key" in err["message"], err
    # every route that takes a body, walked from the app's route table (a new route cannot forget the check)
    body_routes = sorted(p for p, methods in route_table(server.app) if methods & {"POST", "PUT", "PATCH"})
    assert {"/generate", "/v1/completions", "/v1/chat/completions"} <= set(body_routes)
    # the repeated value is a valid one: last-wins would serve it (or name another field)
    for path in body_routes:
        r = post_json(client, path, b'{"model": "tiny", "model": "tiny", "prompt": "x", "max_tokens": 1}')
        assert r.status_code == 422 and r.json()["error"]["param"] == "model", (path, r.text)
        assert "duplicate key" in r.json()["error"]["message"]
    ok = post_json(client, "/v1/completions", b'{"model": "tiny", "prompt": "x", "max_tokens": 1}')
    assert ok.status_code == 200, ok.text
    plain = client.post(
        "/generate", content=b'{"prompt": "a", "prompt": "b"}', headers={"content-type": "text/plain"}
    )
    assert plain.status_code == 422 and plain.json()["error"]["param"] == "body"  # not JSON: unchanged


def test_not_found_routes_are_json(client: httpx.Client) -> None:
    r = client.get("/nope")
    assert r.status_code == 404 and r.json()["error"]["code"] == 404
    r = client.get("/vectors/demo/nothing")
    assert r.status_code == 404 and r.json()["error"]["param"] == "name"


# --- catalog ------------------------------------------------------------------------------------------------


def test_catalog_listing(client: httpx.Client) -> None:
    body = client.get("/vectors").json()
    names = [v["name"] for v in body["vectors"]]
    assert names == sorted([*CATALOG, "demo/late"])
    alpha = next(v for v in body["vectors"] if v["name"] == "demo/alpha")
    assert alpha["space"] == "sae" and alpha["nnz"] == 6 and alpha["strength_range"] == [-50.0, 50.0]
    skipped = {s["path"]: s["reason"] for s in body["skipped"]}
    assert set(skipped) == {"bad/corrupt.safetensors", "demo/leak.safetensors"} and all(skipped.values())
    assert (
        "outside the catalog root" in skipped["demo/leak.safetensors"]
    )  # a link out of the root: not served
    assert client.get("/vectors/demo/leak").status_code == 404
    r = client.post("/generate", json={"prompt": PROMPT, "steer": {"demo/leak": 1.0}})
    assert r.status_code == 422 and r.json()["error"]["type"] == "unknown_vector"
    assert "sae:<feature>" in body["adhoc"]


def test_vector_detail(client: httpx.Client) -> None:
    d = client.get("/vectors/demo/beta").json()
    assert d["name"] == "demo/beta" and d["metadata"]["method"] == "yapo"
    values = [abs(f["value"]) for f in d["top_features"]]
    assert len(values) == 6 and values == sorted(values, reverse=True)
    assert client.get("/vectors/demo/gamma").json()["top_features"] == []


# --- streaming ----------------------------------------------------------------------------------------------


def test_stream_matches_non_stream(api: Api) -> None:
    check_stream_matches_json(api)


# --- OpenAI-compatible ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def oai(server: Any) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0)


def test_openai_models(api: Api, server: Any) -> None:
    assert set(CATALOG) <= {v.name for v in server.runtime.catalog.vectors()}
    check_catalog_and_model_ids(api)


def test_openai_completion_with_steer(
    oai: openai.OpenAI, client: httpx.Client, tiny_engine: LoadedModel
) -> None:
    from vectors.prompts import format_prompt

    native = gen(client, steer={"demo/delta": 4.0}, max_new_tokens=10)
    # /generate formats the prompt as the trainer does (the chat template); /v1/completions continues what it
    # is given, so it gets those very tokens
    ids = format_prompt(tiny_engine.tokenizer, prompt=PROMPT)
    c = oai.completions.create(
        model="tiny", prompt=ids, max_tokens=10, temperature=0, extra_body={"steer": {"demo/delta": 4.0}}
    )
    assert c.choices[0].text == native["text"]
    assert c.choices[0].finish_reason == "length" and c.usage.completion_tokens == 10
    assert c.model_extra["steer"][0]["name"] == "demo/delta"


def test_openai_chat_and_stream(oai: openai.OpenAI) -> None:
    msgs = [{"role": "user", "content": "Hello"}]
    kw: dict[str, Any] = {"model": "tiny", "messages": msgs, "max_tokens": 8, "temperature": 0}
    kw["extra_body"] = {"steer": {"demo/gamma": 3.0}}
    full = oai.chat.completions.create(**kw)
    text = full.choices[0].message.content
    chunks = list(oai.chat.completions.create(**kw, stream=True, stream_options={"include_usage": True}))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == text
    assert chunks[0].choices[0].delta.role == "assistant"
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == [
        "length"
    ]
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 8
    stream = oai.completions.create(model="tiny", prompt=PROMPT, max_tokens=6, temperature=0, stream=True)
    assert len([c for c in stream if c.choices]) >= 2


def test_openai_errors(oai: openai.OpenAI, api: Api) -> None:
    check_unknown_vector_is_a_422(api)
    with pytest.raises(openai.UnprocessableEntityError) as e:
        oai.completions.create(model="tiny", prompt="x", max_tokens=4, extra_body={"steer": {"nope/x": 1.0}})
    assert e.value.body["param"] == "steer.nope/x"
    with pytest.raises(openai.NotFoundError):
        oai.completions.create(model="gpt-4", prompt="x", max_tokens=4)
    with pytest.raises(openai.UnprocessableEntityError):
        oai.completions.create(model="tiny", prompt="x", max_tokens=4, extra_body={"stearing": {}})


# --- concurrency ----------------------------------------------------------------------------------------------


def test_concurrent_requests_are_isolated(client: httpx.Client, server: Any) -> None:
    """≥ 8 concurrent requests with different vectors each get exactly their solo greedy answer."""
    prompts = ["At a wedding we eat", "Hello", "Children play", "For a holiday we cook"]
    steers = [{n: 3.0} for n in CATALOG] + [{"sae:11": 25.0}, {}, {"demo/alpha": 2.0, "demo/beta": -2.0}]
    bodies = [
        {"prompt": prompts[i % len(prompts)], "steer": s, "max_new_tokens": 12} for i, s in enumerate(steers)
    ]
    solo = [gen(client, **b)["text"] for b in bodies]
    before = _metric(client, "steer_batch_size_sum")

    def call(b: dict[str, Any]) -> str:
        with httpx.Client(base_url=server.url, timeout=60) as c:
            return c.post("/generate", json=b).json()["text"]

    with ThreadPoolExecutor(len(bodies)) as pool:
        together = list(pool.map(call, bodies))
    assert together == solo
    assert len(bodies) >= 10
    rows = _metric(client, "steer_batch_size_sum") - before
    steps = 12 * len(bodies)
    assert rows > 0 and steps / rows < len(bodies), "requests should have shared decode steps"


def test_metrics_exposition(client: httpx.Client) -> None:
    text = client.get("/metrics").text
    for name in (
        'steer_requests_total{route="/generate",status="200"}',
        'steer_requests_total{route="/generate",status="422"}',
        "steer_generation_tokens_total",
        "steer_time_to_first_token_seconds_bucket",
        "steer_time_per_output_token_seconds_bucket",
        "steer_batch_steering_configs_bucket",
        "steer_num_requests_waiting",
        "steer_vectors_loaded 8.0",
    ):
        assert name in text, name
    assert _metric(client, "steer_generation_tokens_total") > 100


def _metric(client: httpx.Client, name: str) -> float:
    for line in client.get("/metrics").text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    raise AssertionError(f"metric {name} not found")


def test_docs_stay_available(client: httpx.Client) -> None:
    assert client.get("/docs").status_code == 200
    spec = client.get("/openapi.json").json()
    assert {"/generate", "/vectors", "/v1/completions", "/v1/chat/completions"} <= set(spec["paths"])
