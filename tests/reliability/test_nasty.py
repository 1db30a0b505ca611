"""Bad input, by hand: a table of nasty requests, each with the status and the field its error must name."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from server.engine.model import LoadedModel
from tests.reliability.kit_http import PROMPT, TRAVERSALS, assert_error_body, idle, raw_get, wait_for
from tests.server.kit_server import run_server, settings_for

MB = 1 << 20
J = "application/json"


@pytest.fixture(scope="module")
def server(rel_world: Any, rel_engine: LoadedModel) -> Iterator[Any]:
    settings = settings_for(rel_world, max_new_tokens=4, default_max_new_tokens=2, catalog_poll_s=30)
    with run_server(settings, engine=rel_engine) as running:
        yield running


@pytest.fixture(scope="module")
def client(server: Any) -> Iterator[httpx.Client]:
    with server.client() as c:
        yield c


def body(**fields: Any) -> bytes:
    return json.dumps({"prompt": PROMPT, "max_new_tokens": 2, **fields}, allow_nan=True).encode()


def nested(depth: int) -> bytes:
    return b'{"prompt": "x", "steer": ' + b"[" * depth + b"]" * depth + b"}"


# (id, raw body, content type, expected status, expected `param` of the error or None)
CASES: list[tuple[str, bytes, str | None, int, str | None]] = [
    ("huge-prompt-over-context", body(prompt="wedding " * 100_000), J, 422, "prompt"),
    ("10MB-body", body(prompt="x" * (10 * MB)), J, 413, None),
    ("nan-strength", body(steer={"demo/alpha": float("nan")}), J, 422, "steer.demo/alpha"),
    ("inf-strength", body(steer={"demo/alpha": float("inf")}), J, 422, "steer.demo/alpha"),
    ("-inf-strength", body(steer={"demo/alpha": float("-inf")}), J, 422, "steer.demo/alpha"),
    ("1e999-strength", b'{"prompt": "x", "steer": {"demo/alpha": 1e999}}', J, 422, "steer.demo/alpha"),
    ("huge-strength", body(steer={"demo/alpha": 1e308}), J, 422, "steer.demo/alpha"),
    ("nan-temperature", body(temperature=float("nan")), J, 422, "temperature"),
    ("tiny-temperature", body(temperature=5e-324, top_p=5e-324), J, 200, None),
    ("negative-max-new-tokens", body(max_new_tokens=-1), J, 422, "max_new_tokens"),
    ("zero-max-new-tokens", body(max_new_tokens=0), J, 422, "max_new_tokens"),
    ("enormous-max-new-tokens", body(max_new_tokens=10**30), J, 422, "max_new_tokens"),
    ("float-max-new-tokens", body(max_new_tokens=1.5), J, 422, "max_new_tokens"),
    ("5000-digit-number", b'{"prompt": "x", "max_new_tokens": ' + b"9" * 5000 + b"}", J, 422, "body"),
    ("negative-seed", body(seed=-1), J, 422, "seed"),
    ("seed-2**64", body(seed=2**64), J, 422, "seed"),
    (
        "unicode-and-controls",
        body(prompt="\x00\x01\x1b[31m \u202e\ufeff\uffff 🎉 é ß 中文 \r\n\t"),
        J,
        200,
        None,
    ),
    ("lone-surrogate", b'{"prompt": "a \\ud800 b"}', J, 422, "prompt"),
    ("lone-surrogate-in-chat", b'{"messages": [{"role": "user", "content": "\\udfff"}]}', J, 422, None),
    ("lone-surrogate-in-stop", body(stop=["\ud800"]).replace(b"\\ud800", b"\\ud800"), J, 422, None),
    ("invalid-utf8", b'{"prompt": "a\xff\xfe"}', J, 422, "body"),
    ("deeply-nested-200k", nested(200_000), J, 422, "body"),
    (
        "deeply-nested-objects",
        b'{"prompt": "x", "steer": ' + b'{"a": ' * 50_000 + b"1" + b"}" * 50_001,
        J,
        422,
        "body",
    ),
    ("nested-40", nested(40), J, 422, "steer"),
    ("empty-messages", b'{"messages": []}', J, 422, "messages"),
    ("empty-content", b'{"messages": [{"role": "user", "content": ""}], "max_new_tokens": 2}', J, 200, None),
    ("wrong-role", b'{"messages": [{"role": "tool", "content": "x"}]}', J, 422, "messages.0.role"),
    ("missing-role", b'{"messages": [{"content": "x"}]}', J, 422, "messages.0.role"),
    ("messages-not-list", b'{"messages": "hi"}', J, 422, "messages"),
    (
        "prompt-and-messages",
        b'{"prompt": "x", "messages": [{"role": "user", "content": "x"}]}',
        J,
        422,
        "body",
    ),
    ("traversal-in-steer", body(steer={"../demo/alpha": 1.0}), J, 422, "steer.../demo/alpha"),
    ("traversal-mid-steer", body(steer={"demo/../demo/alpha": 1.0}), J, 422, "steer.demo/../demo/alpha"),
    ("absolute-in-steer", body(steer={"/etc/passwd": 1.0}), J, 422, "steer./etc/passwd"),
    (
        "encoded-in-steer",
        body(steer={"%2e%2e/%2e%2e/etc/passwd": 1.0}),
        J,
        422,
        "steer.%2e%2e/%2e%2e/etc/passwd",
    ),
    ("backslash-in-steer", body(steer={"demo\\..\\alpha": 1.0}), J, 422, "steer.demo\\..\\alpha"),
    ("nul-in-steer", body(steer={"demo/alpha\x00": 1.0}), J, 422, "steer.demo/alpha\x00"),
    ("model-file-by-name", body(steer={"../model/model": 1.0}), J, 422, "steer.../model/model"),
    ("too-many-vectors", body(steer={f"sae:{i}": 1.0 for i in range(1000)}), J, 422, "steer"),
    ("adhoc-out-of-range", body(steer={"sae:999999999": 1.0}), J, 422, "steer.sae:999999999"),
    ("adhoc-wrong-layer", body(steer={"sae:7:1": 1.0}), J, 422, "steer.sae:7:1"),
    ("typo-field", body(stength=8), J, 422, "stength"),
    (
        "typo-in-nested",
        b'{"messages": [{"role": "user", "content": "x", "nmae": "y"}]}',
        J,
        422,
        "messages.0.nmae",
    ),
    ("1000-stops", body(stop=["x"] * 1000), J, 422, "stop"),
    ("empty-stop", body(stop=[""]), J, 422, "stop"),
    (
        "duplicate-keys",
        b'{"prompt": "x", "max_new_tokens": 99, "max_new_tokens": 2}',
        J,
        422,
        "max_new_tokens",
    ),
    (
        "duplicate-steer-keys",
        b'{"prompt": "x", "steer": {"demo/alpha": 1, "demo/alpha": 99}}',
        J,
        422,
        "steer.demo/alpha",
    ),
    ("json-as-text-plain", body(), "text/plain", 422, "body"),
    ("no-content-type", body(), None, 422, "body"),
    ("form-encoded", b"prompt=x", "application/x-www-form-urlencoded", 422, "body"),
    ("multipart", b"--b\r\n\r\nx\r\n--b--", "multipart/form-data; boundary=b", 422, "body"),
    ("utf-16-json", '{"prompt": "x", "max_new_tokens": 2}'.encode("utf-16"), J, 200, None),
    ("empty-body", b"", J, 422, "body"),
    ("null-body", b"null", J, 422, "body"),
    ("array-body", b"[]", J, 422, "body"),
    ("truncated-json", b'{"prompt": ', J, 422, "body"),
    ("bool-for-string", b'{"prompt": true}', J, 422, "prompt"),
]


@pytest.mark.parametrize(
    ("body_", "ctype", "status", "param"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_nasty_generate_bodies(
    client: httpx.Client, body_: bytes, ctype: str | None, status: int, param: str | None
) -> None:
    headers = {"content-type": ctype} if ctype else {}
    r = client.post("/generate", content=body_, headers=headers)
    assert r.status_code == status, r.text[:300]
    if status >= 400:
        err = assert_error_body(r)
        if param is not None:
            assert err["param"] == param, err


def test_chunked_10mb_body_without_length_is_cut_off(client: httpx.Client) -> None:
    def chunks() -> Iterator[bytes]:
        yield b'{"prompt": "'
        for _ in range(10):
            yield b"x" * MB
        yield b'"}'

    r = client.post("/generate", content=chunks(), headers={"content-type": J})
    assert r.status_code == 413 and assert_error_body(r)["type"] == "request_too_large"


def test_openai_routes_share_the_checks(client: httpx.Client) -> None:
    model = client.get("/v1/models").json()["data"][0]["id"]
    cases = [
        ("/v1/completions", {"model": model, "prompt": "x", "max_tokens": -1}, "max_tokens"),
        ("/v1/completions", {"model": model, "prompt": []}, "prompt"),
        ("/v1/completions", {"model": model, "prompt": [1, 10**9]}, "prompt"),  # outside the vocabulary
        ("/v1/completions", {"model": model, "prompt": [[1], [-2]]}, "prompt"),
        ("/v1/completions", {"model": f"{model}:../x", "prompt": "x"}, "model"),
        ("/v1/completions", {"model": model, "prompt": ["a", "b"], "n": 5}, "prompt"),
        ("/v1/completions", {"model": "../../etc/passwd", "prompt": "x"}, "model"),
        ("/v1/completions", {"model": model, "prompt": "x", "steer": {"../x": 1}}, "steer.../x"),
        ("/v1/chat/completions", {"model": model, "messages": []}, "messages"),
        (
            "/v1/chat/completions",
            {"model": model, "messages": [{"role": "tool", "content": "x"}]},
            "messages.0.role",
        ),
        (
            "/v1/chat/completions",
            {"model": model, "messages": [{"role": "user", "content": "x"}], "n": 99},
            "n",
        ),
    ]
    for path, payload, param in cases:
        r = client.post(path, json=payload)
        assert 400 <= r.status_code < 500, (path, payload, r.text)
        assert assert_error_body(r)["param"] == param, (path, payload, r.text)


@pytest.mark.parametrize("path", TRAVERSALS)
def test_vector_names_never_reach_the_filesystem(server: Any, path: str) -> None:
    status, payload = raw_get(server.url, path)
    assert status in (404, 422), (path, status, payload)
    assert payload["error"]["code"] == status


def test_big_and_many_headers_do_not_break_the_server(client: httpx.Client) -> None:
    r = client.get("/health", headers={f"x-h{i}": "v" * 100 for i in range(200)})
    assert r.status_code < 500
    r = client.get("/health", headers={"x-big": "a" * 60_000})
    assert r.status_code < 500


def test_wrong_methods_and_unknown_routes_are_json(client: httpx.Client) -> None:
    for method, path, status in [
        ("PUT", "/generate", 405),
        ("DELETE", "/vectors/demo/alpha", 405),
        ("GET", "/generate", 405),
        ("POST", "/vectors", 405),
        ("GET", "/v2/anything", 404),
    ]:
        r = client.request(method, path)
        assert r.status_code == status, (method, path, r.status_code)
        assert_error_body(r)


def test_compare_on_a_one_row_server_is_a_422(rel_world: Any, rel_engine: LoadedModel) -> None:
    settings = settings_for(rel_world, max_batch=1, catalog_poll_s=30)
    with run_server(settings, engine=rel_engine) as one, one.client() as c:
        r = c.post("/generate", json={"prompt": PROMPT, "max_new_tokens": 2, "compare": True})
        assert r.status_code == 422 and assert_error_body(r)["param"] == "compare"


def test_server_is_fine_afterwards(client: httpx.Client) -> None:
    wait_for(lambda: idle(client), what="idle")
    assert client.get("/ready").status_code == 200
    assert client.post("/generate", json={"prompt": PROMPT, "max_new_tokens": 2}).status_code == 200
