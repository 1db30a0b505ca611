"""Security: the API key beyond the basic route walk of tests/server (methods, header variants, unknown
paths), constant-time comparison, the key never echoed or logged, no unsafe deserialisation anywhere in the
source, no request path reaching the filesystem outside the catalog, a bounded request head, loopback default.

The route-by-route walk itself (every route but /health answers 401 without the key) is
tests/server/test_lifecycle.py::test_every_route_but_health_needs_the_key.
"""

from __future__ import annotations

import ast
import asyncio
import contextlib
import json
import logging
import os
import socket
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn

from server.engine.model import LoadedModel
from server.middleware import ApiKeyAuth, is_open, route_table
from tests.reliability.kit_http import PROMPT, REPO, TRAVERSALS, assert_error_body, raw_get, wait_for
from tests.server.kit_server import run_server, settings_for

KEY = "k3y-Rel1ab1l1ty-0123456789"


@pytest.fixture(scope="module")
def locked(rel_world: Any, rel_engine: LoadedModel) -> Iterator[Any]:
    with run_server(settings_for(rel_world, api_key=KEY, catalog_poll_s=30), engine=rel_engine) as running:
        yield running


def _concrete(path: str) -> str:
    import re

    return re.sub(r"\{[^}]+\}", "demo/alpha", path)


BAD_HEADERS = [
    {},
    {"Authorization": f"bearer {KEY}"},  # exact bytes: the scheme too
    {"Authorization": f"Bearer  {KEY}"},
    {"Authorization": f"Bearer {KEY[:-1]}"},
    {"Authorization": f"Bearer {KEY}x"},
    {"Authorization": f"Bearer {KEY.upper()}"},
    {"Authorization": f"Basic {KEY}"},
    {"Authorization": "Bearer"},
    {"X-Api-Key": KEY},
    {"Cookie": f"key={KEY}"},
]


def test_every_method_and_header_variant_is_refused(locked: Any) -> None:
    routes = route_table(locked.app)
    with httpx.Client(base_url=locked.url, timeout=30) as c:
        for path, methods in routes:
            for method in sorted(methods | {"OPTIONS", "HEAD"}):
                for headers in BAD_HEADERS:
                    r = c.request(method, _concrete(path), headers=headers)
                    if is_open(_concrete(path)):
                        assert r.status_code != 401, (method, path)
                        continue
                    assert r.status_code == 401, (method, path, headers, r.status_code)
                    if method != "HEAD":
                        assert assert_error_body(r)["type"] == "authentication_error"
                        assert KEY not in r.text


def test_unknown_paths_and_health_lookalikes_need_the_key(locked: Any) -> None:
    """401 before routing: an anonymous client cannot even learn which paths exist."""
    with httpx.Client(base_url=locked.url, timeout=30) as c:
        for path in (
            "/nope",
            "/health/",
            "/healthz",
            "/v1",
            "/admin",
            "/HEALTH",
        ):
            r = c.get(path)
            assert r.status_code == 401, (path, r.status_code)
        assert c.get("/health", params={"x": "1"}).status_code == 200
        ok = c.post(
            "/generate",
            json={"prompt": PROMPT, "max_new_tokens": 2},
            headers={"Authorization": f"Bearer {KEY}"},
        )
        assert ok.status_code == 200


OPEN_PREFIX_ESCAPES = [
    "/playground/../generate",
    "/playground/../vectors",
    "/playground/%2e%2e/vectors",
    "/playground/..%2fvectors",
    "/playground/../../server/settings.py",
    "/playground/%2e%2e/%2e%2e/pyproject.toml",
    "/playground/..%2f..%2f..%2fpyproject.toml",
    "/playground//etc/passwd",
]


@pytest.mark.parametrize("path", OPEN_PREFIX_ESCAPES)
def test_open_playground_prefix_leads_nowhere_else(locked: Any, path: str) -> None:
    """The key-free static prefix neither reaches an API route nor serves a file outside its folder."""
    status, payload = raw_get(locked.url, path)
    assert status in (401, 404), (path, status)
    text = json.dumps(payload)
    assert "ServerSettings" not in text and "[project]" not in text and "root:" not in text


def test_duplicate_authorization_headers_use_the_first(locked: Any) -> None:
    with socket.create_connection(("127.0.0.1", int(locked.url.rsplit(":", 1)[1])), timeout=10) as s:
        s.sendall(
            b"GET /vectors HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer wrong\r\n"
            + f"Authorization: Bearer {KEY}\r\nConnection: close\r\n\r\n".encode()
        )
        assert s.recv(64).startswith(b"HTTP/1.1 401")


def test_key_is_compared_in_constant_time(monkeypatch: pytest.MonkeyPatch) -> None:
    import server.middleware as middleware

    calls: list[tuple[bytes, bytes]] = []
    real = middleware.hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(middleware.hmac, "compare_digest", spy)
    sent: list[dict[str, Any]] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        raise AssertionError("must not be reached")

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "path": "/generate",
        "method": "POST",
        "headers": [(b"authorization", b"Bearer nope")],
    }
    asyncio.run(ApiKeyAuth(app, KEY)(scope, None, send))  # type: ignore[arg-type]
    assert calls == [(b"Bearer nope", f"Bearer {KEY}".encode())]
    assert sent[0]["status"] == 401
    source = Path(middleware.__file__).read_text()
    tree = ast.parse(source)
    auth = next(n for n in ast.walk(tree) if isinstance(n, ast.ClassDef) and n.name == "ApiKeyAuth")
    assert not any(
        isinstance(n, ast.Compare) and any(isinstance(o, ast.Eq | ast.NotEq) for o in n.ops)
        for n in ast.walk(auth)
        if "expected" in ast.unparse(n)
    )


def test_key_never_appears_in_logs_or_responses(
    rel_world: Any, rel_engine: LoadedModel, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    settings = settings_for(rel_world, api_key=KEY, catalog_poll_s=30)
    assert KEY not in repr(settings) and KEY not in str(settings.model_dump())
    bodies: list[str] = []
    with run_server(settings, engine=rel_engine) as srv, srv.client() as c:
        auth = {"Authorization": f"Bearer {KEY}"}
        for path in ("/ready", "/metrics", "/openapi.json", "/vectors", "/v1/models"):
            bodies.append(c.get(path, headers=auth).text)
            bodies.append(c.get(path, headers={"Authorization": f"Bearer {KEY}x"}).text)
        bodies.append(
            c.post(
                "/generate", json={"prompt": KEY, "max_new_tokens": 1}, headers={"Authorization": "Bearer x"}
            ).text
        )
        bodies.append(c.post("/generate", json={"prompt": "x", "steer": {KEY: 1}}, headers=auth).text)
    assert not any(KEY in b for b in bodies[:-1])
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert KEY not in logged


# --- source scan --------------------------------------------------------------------------------------------

SKIP_DIRS = {
    ".venv",
    "var",
    ".git",
    "node_modules",
    "build",
    "dist",
    "__pycache__",
    ".hypothesis",
    ".ruff_cache",
}


def python_sources() -> list[Path]:
    out = []
    for dirpath, dirnames, filenames in os.walk(REPO):
        dirnames[:] = [d for d in dirnames if d not in SKIP_DIRS and not d.startswith(".")]
        out += [Path(dirpath) / f for f in filenames if f.endswith(".py")]
    return out


UNSAFE_MODULES = {"pickle", "cPickle", "_pickle", "cloudpickle", "dill", "shelve", "marshal", "joblib"}


def unsafe_calls(tree: ast.AST) -> list[str]:
    """Deserialisation that can run code: pickle & co., torch.load without weights_only=True,
    numpy.load(allow_pickle=True), yaml.load without a safe loader."""
    found: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import | ast.ImportFrom):
            names = [a.name for a in node.names] + (
                [node.module] if isinstance(node, ast.ImportFrom) and node.module else []
            )
            found += [f"import {n}" for n in names if n and n.split(".")[0] in UNSAFE_MODULES]
        if not isinstance(node, ast.Call):
            continue
        name = ast.unparse(node.func)
        kwargs = {k.arg: ast.unparse(k.value) for k in node.keywords}
        if name.endswith("torch.load") and kwargs.get("weights_only") != "True":
            found.append(f"{name}(...) without weights_only=True (line {node.lineno})")
        if (
            name.split(".")[-1] == "load"
            and name.split(".")[0] in ("np", "numpy")
            and kwargs.get("allow_pickle") == "True"
        ):
            found.append(f"{name}(allow_pickle=True) (line {node.lineno})")
        if name in ("yaml.load", "yaml.load_all") and "Safe" not in kwargs.get("Loader", ""):
            found.append(f"{name} without SafeLoader (line {node.lineno})")
        if name in ("yaml.unsafe_load", "yaml.full_load"):
            found.append(f"{name} (line {node.lineno})")
    return found


def test_no_unsafe_deserialisation_in_the_source() -> None:
    files = python_sources()
    assert len(files) > 50 and any(f.name == "runner.py" and f.parent.name == "engine" for f in files)
    problems = {
        str(f.relative_to(REPO)): p for f in files if (p := unsafe_calls(ast.parse(f.read_text(), str(f))))
    }
    assert not problems, problems


def test_the_scanner_catches_what_it_should() -> None:
    # Built from pieces so that text searches of the source for unsafe calls don't flag this test itself.
    torch_load = "torch." + "load"
    bad = (
        "import pickle\nimport torch\nfrom dill import loads\n"
        f"{torch_load}('x')\n{torch_load}('x', weights_only=False)\n"
        "import numpy as np\nnp.load('a', allow_pickle=True)\nimport yaml\nyaml.load(s)\n"
    )
    assert len(unsafe_calls(ast.parse(bad))) == 6
    good = "import torch\ntorch.load('x', weights_only=True)\nimport yaml\nyaml.load(s, Loader=yaml.SafeLoader)\nyaml.safe_load(s)\n"
    assert unsafe_calls(ast.parse(good)) == []


# --- filesystem ---------------------------------------------------------------------------------------------


class OpenedPaths:
    """Every path opened or stat'ed by any thread of this process while `recording` (an audit hook)."""

    installed: OpenedPaths | None = None

    def __init__(self) -> None:
        self.recording = False
        self.paths: list[str] = []

    @classmethod
    def get(cls) -> OpenedPaths:
        if cls.installed is None:
            cls.installed = cls()
            sys.addaudithook(cls.installed.hook)  # hooks cannot be removed: it records only when asked
        return cls.installed

    def hook(self, event: str, args: tuple[Any, ...]) -> None:
        if self.recording and event in ("open", "os.listdir", "os.scandir", "os.stat") and args:
            path = args[0]
            if isinstance(path, str | bytes | os.PathLike):
                self.paths.append(os.fsdecode(path))


def test_requests_never_open_files_outside_the_catalog(rel_world: Any, rel_engine: LoadedModel) -> None:
    names = [
        "../model/model",
        "/etc/passwd",
        "%2e%2e/%2e%2e/etc/passwd",
        "demo/../../model/model",
        "demo/alpha",
    ]
    recorder = OpenedPaths.get()
    root = Path(rel_world.catalog).resolve().parent  # holds model/, sae/ and vectors/
    with (
        run_server(settings_for(rel_world, catalog_poll_s=3600), engine=rel_engine) as srv,
        srv.client() as c,
    ):
        time.sleep(0.2)
        recorder.paths.clear()
        recorder.recording = True
        try:
            for path in TRAVERSALS:
                raw_get(srv.url, path)
            for name in names:
                c.post("/generate", json={"prompt": PROMPT, "max_new_tokens": 1, "steer": {name: 1.0}})
                c.post("/v1/completions", json={"model": name, "prompt": "x", "max_tokens": 1})
        finally:
            recorder.recording = False
    touched = [p for p in recorder.paths if p.startswith(str(root)) or "passwd" in p]
    assert not touched, touched  # the catalog is read by the poller only, never by a request


# --- the request head and the bind address ------------------------------------------------------------------


@contextlib.contextmanager
def launcher_server(settings: Any, engine: LoadedModel) -> Iterator[str]:
    """The app under the uvicorn configuration `steer serve` uses (server.uvicorn_server.uvicorn_config)."""
    from server.app import create_app
    from server.uvicorn_server import uvicorn_config

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    config = uvicorn_config(create_app(settings, engine=engine), settings, log_level="warning")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    try:
        wait_for(lambda: server.started, timeout=30, what="started")
        yield url
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()


def test_request_head_is_bounded(rel_world: Any, rel_engine: LoadedModel) -> None:
    settings = settings_for(rel_world, max_header_bytes=16 * 1024, warmup=False, catalog_poll_s=30)
    with launcher_server(settings, rel_engine) as url, httpx.Client(base_url=url, timeout=30) as c:
        assert c.get("/health").status_code == 200
        for headers in ({"x-big": "a" * 1_000_000}, {f"x-{i}": "v" * 100 for i in range(2000)}):
            with contextlib.suppress(httpx.HTTPError):  # the server may answer 431/400 or just close
                r = c.get("/health", headers=headers)
                assert 400 <= r.status_code < 500
        assert c.get("/health").status_code == 200


def test_server_binds_loopback_by_default(monkeypatch: pytest.MonkeyPatch, rel_world: Any) -> None:
    import argparse

    from server.commands import register, settings_from_args
    from server.settings import ServerSettings
    from server.uvicorn_server import uvicorn_config

    monkeypatch.delenv("STEER_HOST", raising=False)
    assert ServerSettings(model="m", vectors="v").host == "127.0.0.1"
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    args = parser.parse_args(["serve", "--model", str(rel_world.model), "--vectors", str(rel_world.catalog)])
    settings = settings_from_args(args)
    assert settings.host == "127.0.0.1"
    assert uvicorn_config(object(), settings).host == "127.0.0.1"
