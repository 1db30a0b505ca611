"""HTTP probes and checks of the reliability tests: metrics, waiting for a condition, raw paths, the one error
schema. The tiny world and the real-server runner are the server tests' (`tests/server/kit_world.py`,
`tests/server/kit_server.py`)."""

from __future__ import annotations

import http.client
import json
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx

from tests.server.kit_world import TinyWorld

REPO = Path(__file__).resolve().parents[2]

PROMPT = "At a wedding we eat"


def metric(client: httpx.Client, name: str) -> float:
    """Sum of the samples of `name` (exact name or with labels) in `/metrics`."""
    total, found = 0.0, False
    for line in client.get("/metrics").text.splitlines():
        if line.startswith((name + " ", name + "{")):
            total += float(line.split()[-1])
            found = True
    assert found, name
    return total


def wait_for(predicate: Callable[[], Any], timeout: float = 30.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not reached within {timeout} s")
        time.sleep(0.02)


def idle(client: httpx.Client) -> bool:
    ready = client.get("/ready").json()
    return ready["queue_depth"] == 0 and ready["running"] == 0


def content_type(r: Any) -> str:
    """Content type of an httpx or schemathesis response (the latter keeps header values in lists)."""
    for name, value in r.headers.items():
        if name.lower() == "content-type":
            return value[0] if isinstance(value, list) else value
    return ""


def assert_error_body(r: httpx.Response | Any, where: str = "") -> dict[str, Any]:
    """Every error is the one JSON schema; a 422 names the field (`param`)."""
    assert content_type(r).startswith("application/json"), (where, r.status_code, r.text)
    err = r.json()["error"]
    assert isinstance(err["message"], str) and err["message"], (where, err)
    assert isinstance(err["type"], str) and err["code"] == r.status_code, (where, err)
    if r.status_code == 422:
        assert isinstance(err["param"], str) and err["param"], (where, err)
    return err


def private_copy(world: TinyWorld, root: Path) -> TinyWorld:
    """The same model and SAE with a catalog of its own (for tests that write to the catalog)."""
    shutil.copytree(world.catalog, root, dirs_exist_ok=True)
    return TinyWorld(model=world.model, sae=world.sae, catalog=root)


def raw_get(url: str, path: str) -> tuple[int, dict[str, Any]]:
    """GET with the path sent byte for byte (httpx would normalise `..` segments away)."""
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
    try:
        conn.putrequest("GET", path, skip_accept_encoding=True)
        conn.endheaders()
        resp = conn.getresponse()
        data = resp.read()
        try:
            return resp.status, json.loads(data or b"{}")
        except ValueError:
            return resp.status, {"raw": data.decode(errors="replace")}
    finally:
        conn.close()


TRAVERSALS = [
    "/vectors/../model/model",
    "/vectors/../../etc/passwd",
    "/vectors/..%2f..%2fetc%2fpasswd",
    "/vectors/%2e%2e/%2e%2e/etc/passwd",
    "/vectors/%2e%2e%2fmodel%2fmodel",
    "/vectors/demo/%2e%2e/%2e%2e/model/model",
    "/vectors/%2Fetc%2Fpasswd",
    "/vectors//etc/passwd",
    "/vectors/demo/alpha%00",
    "/vectors/demo/alpha.safetensors",
    "/vectors/demo%5c..%5c..%5cmodel",
    "/vectors/..",
    "/vectors/.",
]
