"""Bad input at scale: schemathesis fuzzing of the OpenAPI spec and hypothesis-generated bodies, against the
real server. Every response must be < 500, every error the one JSON schema, every 422 naming its field.

Generation is kept cheap (a tiny model; `max_new_tokens` capped at 2), so most time goes into validation.
The quotas below add up to >= 10,000 requests per run; each test asserts it sent its share.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from server.engine.model import LoadedModel
from server.protocol.chat import ChatCompletionRequest
from server.protocol.completions import CompletionRequest
from server.protocol.generate import GenerateRequest
from tests.reliability.kit_http import assert_error_body, content_type, idle, wait_for
from tests.server.kit_server import run_server, settings_for
from tests.server.kit_world import CATALOG

MODEL = "tiny"
POST_ROUTES = ("/generate", "/v1/completions", "/v1/chat/completions")
# Each route's own fields: a generated "stray" key that happens to be one (hypothesis also tries the string
# constants of the code, such as "echo") is a real field, not a stray.
ROUTE_FIELDS = {
    "/generate": set(GenerateRequest.model_fields),
    "/v1/completions": set(CompletionRequest.model_fields),
    "/v1/chat/completions": set(ChatCompletionRequest.model_fields),
}
# Per operation and generation mode. Negative cases cost schemathesis ~5x more to generate than positive ones.
SCHEMA_QUOTA = {"body": 700, "body-negative": 400, "path": 500}
RAW_QUOTA = 800  # per POST route and strategy
HIDDEN_QUOTA = 100
SENT: dict[str, int] = {}  # test id -> requests sent, for the closing check
FUZZ = settings(
    deadline=None,
    database=None,
    derandomize=False,
    suppress_health_check=list(HealthCheck),
    print_blob=True,
)


def fuzz(examples: int) -> settings:
    """Hypothesis settings for `examples` requests (no deadline, no example database, no health checks)."""
    return settings(FUZZ, max_examples=examples)


def quota_of(op: Any, mode: Any) -> int:
    """Requests for one operation in one generation mode. Negative path strings and negative versions of
    parameterless GETs do not exist (schemathesis finds none); a parameterless GET has one positive case."""
    if op.body is not None and len(op.body):
        return SCHEMA_QUOTA["body" if mode == schemathesis.GenerationMode.POSITIVE else "body-negative"]
    if len(op.path_parameters):
        return SCHEMA_QUOTA["path"] if mode == schemathesis.GenerationMode.POSITIVE else 0
    return 1 if mode == schemathesis.GenerationMode.POSITIVE else 0


def total_quota(operations: list[Any]) -> int:
    schema = sum(quota_of(op, mode) for op in operations for mode in schemathesis.GenerationMode)
    return schema + 3 * len(POST_ROUTES) * RAW_QUOTA + HIDDEN_QUOTA


@pytest.fixture(scope="module")
def server(rel_world: Any, rel_engine: LoadedModel) -> Iterator[Any]:
    settings_ = settings_for(
        rel_world,
        model_name=MODEL,
        max_new_tokens=2,
        default_max_new_tokens=1,
        max_body_bytes=64 * 1024,
        max_queue=256,
        catalog_poll_s=30,
    )
    with run_server(settings_, engine=rel_engine) as running:
        yield running


@pytest.fixture(scope="module")
def client(server: Any) -> Iterator[httpx.Client]:
    with server.client() as c:
        yield c


def check(r: Any, where: str) -> None:
    """The properties every response must have."""
    assert r.status_code < 500, (where, r.status_code, r.text[:500])
    if r.status_code >= 400:
        assert_error_body(r, where)
    elif content_type(r).startswith("text/event-stream"):
        assert "internal_error" not in r.text and '"code":5' not in r.text.replace(" ", ""), (where, r.text)
    elif content_type(r).startswith("application/json"):
        r.json()


# --- schemathesis: every operation of the OpenAPI spec, positive and negative -----------------------------


@pytest.fixture(scope="module")
def operations(server: Any) -> list[Any]:
    schema = schemathesis.openapi.from_url(f"{server.url}/openapi.json")
    return [result.ok() for result in schema.get_all_operations()]


def app_routes(server: Any) -> set[tuple[str, str]]:
    """(method, path) of every route of the app, path parameters written as in the spec."""
    from server.middleware import route_table

    return {
        (m, re.sub(r"\{(\w+):\w+\}", r"{\1}", p))
        for p, methods in route_table(server.app)
        for m in methods
        if m != "HEAD" and not p.startswith(("/docs", "/redoc", "/openapi"))
    }


def test_spec_lists_every_api_route(operations: list[Any], server: Any) -> None:
    spec = {(op.method.upper(), op.path) for op in operations}
    hidden = app_routes(server) - spec
    assert all(m == "GET" for m, _ in hidden), hidden  # only pages (e.g. a playground) stay out of the spec
    assert {p for _, p in spec} >= {"/generate", "/v1/completions", "/v1/chat/completions", "/vectors/{name}"}
    assert total_quota(operations) >= 10_000


def test_routes_outside_the_spec(operations: list[Any], server: Any, client: httpx.Client) -> None:
    """Routes the spec does not describe (HTML pages) get random query strings and headers."""
    spec = {(op.method.upper(), op.path) for op in operations}
    hidden = sorted(p for _, p in app_routes(server) - spec)

    @fuzz(HIDDEN_QUOTA)
    @given(
        path=st.sampled_from(hidden or ["/health"]),
        query=st.dictionaries(st.text(max_size=8), st.text(max_size=20), max_size=3),
        accept=st.sampled_from(["*/*", "text/html", "application/json", "", "x/y;q=a"]),
    )
    def run(path: str, query: dict[str, str], accept: str) -> None:
        r = client.get(path, params=query, headers={"accept": accept})
        check(r, f"GET {path} {query}")

    run()


def fuzz_operation(op: Any, mode: Any, url: str, session: requests.Session) -> int:
    """Run `op`'s schemathesis strategy against the server; returns how many requests were sent."""
    key = f"{op.method.upper()} {op.path}"
    sent = 0
    quota = quota_of(op, mode)
    if quota == 0:
        return 0

    @fuzz(quota)
    @given(case=op.as_strategy(mode), real_model=st.booleans())
    def run(case: Any, real_model: bool) -> None:
        nonlocal sent
        if real_model and isinstance(case.body, dict) and "model" in case.body:
            case.body["model"] = MODEL  # get past the model check half the time
        r = case.call(base_url=url, session=session, timeout=30)
        sent += 1
        check(r, f"{key} {mode.value} {case.body!r:.300}")

    run()
    return sent


@pytest.mark.parametrize("mode", list(schemathesis.GenerationMode), ids=lambda m: m.value)
def test_schemathesis_every_operation(operations: list[Any], server: Any, mode: Any) -> None:
    session = requests.Session()
    sent = {
        f"{op.method.upper()} {op.path}": fuzz_operation(op, mode, server.url, session) for op in operations
    }
    SENT[f"schemathesis-{mode.value}"] = sum(sent.values())
    want = {f"{op.method.upper()} {op.path}": quota_of(op, mode) for op in operations}
    short = {k: (n, want[k]) for k, n in sent.items() if n < 0.9 * want[k]}
    assert not short, short


# --- hypothesis: JSON that the spec does not describe -------------------------------------------------------

SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=40)
)
JSON = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=12,
)
NAMES = st.sampled_from(
    [
        *CATALOG,
        "sae:0",
        "sae:255",
        "sae:256",
        "sae:2:3",
        "sae:9:3",
        "sae:",
        "sae:-1",
        "sae:99999999999",
        "../demo/alpha",
        "demo/../demo/alpha",
        "/etc/passwd",
        "%2e%2e/%2e%2e/etc/passwd",
        "demo/alpha\x00",
        "DEMO/ALPHA",
        "",
    ]
) | st.text(max_size=30)
STRENGTHS = st.floats(allow_nan=True, allow_infinity=True) | st.integers(-(10**30), 10**30)
FIELDS: dict[str, Any] = {
    "steer": st.dictionaries(NAMES, STRENGTHS, max_size=10) | JSON,
    "apply": st.sampled_from(["prompt", "generation", "both", "Both", ""]) | JSON,
    "max_new_tokens": st.integers(-5, 5) | st.sampled_from([2**31, 2**63, 10**30]) | JSON,
    "max_tokens": st.integers(-5, 5) | st.sampled_from([2**31, 2**63, 10**30]) | JSON,
    "temperature": st.floats(allow_nan=True, allow_infinity=True) | JSON,
    "top_p": st.floats(allow_nan=True, allow_infinity=True) | JSON,
    "top_k": st.integers(-(2**40), 2**40) | JSON,
    "seed": st.integers(-(2**65), 2**65) | JSON,
    "stop": st.lists(st.text(max_size=5), max_size=6) | st.text(max_size=5) | JSON,
    "stream": st.booleans() | JSON,
    "compare": st.booleans() | JSON,
    "n": st.integers(-2, 3) | JSON,
    "messages": st.lists(
        st.fixed_dictionaries(
            {
                "role": st.sampled_from(["user", "system", "assistant", "tool", "USER", ""]),
                "content": st.text(max_size=60),
            }
        ),
        max_size=3,
    )
    | JSON,
    "prompt": st.text(max_size=200) | st.lists(st.text(max_size=20), max_size=2) | JSON,
    "model": st.just(MODEL) | st.text(max_size=10),
}


def base_body(route: str) -> dict[str, Any]:
    if route == "/generate":
        return {"prompt": "At a wedding", "max_new_tokens": 1}
    if route == "/v1/completions":
        return {"model": MODEL, "prompt": "At a wedding", "max_tokens": 1}
    return {"model": MODEL, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 1}


def post(
    client: httpx.Client, route: str, content: bytes, content_type: str = "application/json"
) -> httpx.Response:
    return client.post(route, content=content, headers={"content-type": content_type})


@pytest.mark.parametrize("route", POST_ROUTES)
def test_mutated_valid_bodies(client: httpx.Client, route: str) -> None:
    """A valid body with some fields replaced by anything (NaN and inf included) and maybe a stray key."""
    sent = 0

    @fuzz(RAW_QUOTA)
    @given(
        changes=st.dictionaries(st.sampled_from(sorted(FIELDS)), st.none(), max_size=4).flatmap(
            lambda keys: st.fixed_dictionaries({k: FIELDS[k] for k in keys})
        ),
        stray=st.none() | st.text(min_size=1, max_size=8),
    )
    def run(changes: dict[str, Any], stray: str | None) -> None:
        nonlocal sent
        body = {**base_body(route), **changes}
        if stray is not None:
            body[stray] = 1
        r = post(client, route, json.dumps(body, allow_nan=True).encode())
        sent += 1
        check(r, f"{route} {body!r:.300}")
        if stray is not None and stray not in FIELDS and stray not in ROUTE_FIELDS[route]:
            assert r.status_code in (413, 422, 404), (body, r.status_code)  # unknown fields are never ignored

    run()
    SENT[f"mutated {route}"] = sent
    assert sent >= 0.9 * RAW_QUOTA


@pytest.mark.parametrize("route", POST_ROUTES)
def test_arbitrary_json(client: httpx.Client, route: str) -> None:
    sent = 0

    @fuzz(RAW_QUOTA)
    @given(value=JSON)
    def run(value: Any) -> None:
        nonlocal sent
        r = post(client, route, json.dumps(value, allow_nan=True).encode())
        sent += 1
        check(r, f"{route} {value!r:.300}")

    run()
    SENT[f"json {route}"] = sent
    assert sent >= 0.9 * RAW_QUOTA


@pytest.mark.parametrize("route", POST_ROUTES)
def test_arbitrary_bytes_and_content_types(client: httpx.Client, route: str) -> None:
    sent = 0
    types = st.sampled_from(
        [
            "application/json",
            "text/plain",
            "application/x-www-form-urlencoded",
            "multipart/form-data",
            "",
            "application/json; charset=utf-16",
        ]
    )

    @fuzz(RAW_QUOTA)
    @given(content=st.binary(max_size=300) | st.text(max_size=300).map(str.encode), content_type=types)
    def run(content: bytes, content_type: str) -> None:
        nonlocal sent
        r = post(client, route, content, content_type)
        sent += 1
        check(r, f"{route} {content_type} {content!r:.300}")

    run()
    SENT[f"bytes {route}"] = sent
    assert sent >= 0.9 * RAW_QUOTA


def test_server_is_fine_afterwards(client: httpx.Client) -> None:
    wait_for(lambda: idle(client), what="idle after fuzzing")
    assert client.get("/ready").status_code == 200
    r = client.post("/generate", json={"prompt": "At a wedding", "max_new_tokens": 2})
    assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] >= 1
    by_status: dict[str, float] = {}
    for line in client.get("/metrics").text.splitlines():
        if line.startswith("steer_requests_total{") and 'route="/ready"' not in line:  # 503 while loading
            status = line.split('status="')[1].split('"')[0]
            by_status[status] = by_status.get(status, 0) + float(line.split()[-1])
    print(f"fuzz requests by test: {SENT}; total {sum(SENT.values())}; server saw by status: {by_status}")
    assert not any(s.startswith("5") for s in by_status), by_status
    if len(SENT) == 2 + 3 * len(POST_ROUTES):  # the whole module ran
        assert sum(SENT.values()) >= 10_000
