"""Auth on every route, and the process lifecycle of `steer serve` (loading, SIGTERM drain, failed start)."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from server.engine.model import LoadedModel
from server.middleware import is_open, route_table
from tests.server.kit_server import parse_sse, run_server, settings_for
from tests.server.kit_world import TinyWorld

KEY = "s3cret-key"
REPO = Path(__file__).resolve().parents[2]


# --- auth -------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def locked(tiny_world: TinyWorld, tiny_engine: LoadedModel) -> Iterator[Any]:
    with run_server(settings_for(tiny_world, api_key=KEY), engine=tiny_engine) as running:
        yield running


def _concrete(path: str) -> str:
    return re.sub(r"\{[^}]+\}", "demo/alpha", path)


def test_every_route_but_health_needs_the_key(locked: Any) -> None:
    """Walks the app's own route table, so a route added later cannot escape the check.

    Open: /health and the playground's static page (`is_open`); its API calls carry the key."""
    routes = route_table(locked.app)
    assert {"/generate", "/vectors", "/v1/chat/completions", "/metrics", "/ready"} <= {p for p, _ in routes}
    with httpx.Client(base_url=locked.url, timeout=30) as c:
        for path, methods in routes:
            for method in sorted(methods):
                if method == "HEAD":
                    continue
                url = _concrete(path)
                for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": KEY}):
                    r = c.request(method, url, headers=headers, json={} if method == "POST" else None)
                    if is_open(url):
                        assert r.status_code < 400, (method, path, r.status_code)  # the page redirects
                    else:
                        assert r.status_code == 401, (method, path, headers, r.status_code)
                        assert r.json()["error"]["type"] == "authentication_error"
                good = c.request(
                    method,
                    url,
                    headers={"Authorization": f"Bearer {KEY}"},
                    json={"prompt": "hi", "max_new_tokens": 1}
                    if method == "POST" and path == "/generate"
                    else ({} if method == "POST" else None),
                )
                assert good.status_code != 401, (method, path)


def test_key_grants_generation(locked: Any) -> None:
    headers = {"Authorization": f"Bearer {KEY}"}
    r = httpx.post(f"{locked.url}/generate", json={"prompt": "Hello", "max_new_tokens": 3}, headers=headers)
    assert r.status_code == 200


# --- the `steer serve` process ----------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _spawn(
    world: TinyWorld, port: int, step_delay_s: float | None = None, **env: str
) -> subprocess.Popen[bytes]:
    """`steer serve` in a child process (its decode steps slowed by a runner double with `step_delay_s`)."""
    full_env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "STEER_SAE": str(world.sae),
        "STEER_DEVICE": "cpu",
        "STEER_CATALOG_POLL_S": "0.5",
        **env,
    }
    launcher = ["-m", "steer_cli"]
    if step_delay_s is not None:
        launcher = ["-m", "tests.server.kit_slow_serve", str(step_delay_s)]
        full_env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    cmd = [
        sys.executable,
        *launcher,
        "serve",
        "--model",
        str(world.model),
        "--vectors",
        str(world.catalog),
    ]
    cmd += ["--port", str(port), "--log-level", "warning"]
    return subprocess.Popen(cmd, env=full_env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def test_sigterm_drains_in_flight_requests(tiny_world: TinyWorld) -> None:
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    proc = _spawn(tiny_world, port, step_delay_s=0.05, STEER_DRAIN_TIMEOUT_S="20")
    try:
        seen_loading = False
        deadline = time.monotonic() + 90
        while True:
            assert proc.poll() is None, proc.stdout.read().decode() if proc.stdout else ""
            assert time.monotonic() < deadline, "server never became ready"
            try:
                r = httpx.get(f"{url}/ready", timeout=2)
            except httpx.HTTPError:
                time.sleep(0.05)
                continue
            if r.status_code == 200:
                break
            assert r.status_code == 503 and r.json()["status"] == "loading"
            assert httpx.get(f"{url}/health").status_code == 200
            seen_loading = True
            time.sleep(0.05)
        assert seen_loading, "/ready should answer 503 while the model loads"

        with httpx.Client(base_url=url, timeout=60) as c:
            body = {
                "prompt": "At a wedding",
                "max_new_tokens": 30,
                "stream": True,
                "steer": {"demo/alpha": 2.0},
            }
            with c.stream("POST", "/generate", json=body) as stream:
                lines = stream.iter_lines()
                for line in lines:
                    if line.startswith("data:"):
                        break
                proc.send_signal(signal.SIGTERM)
                time.sleep(0.3)
                with httpx.Client(base_url=url, timeout=10) as other:
                    ready = other.get("/ready")
                    assert ready.status_code == 503 and ready.json()["status"] == "draining"
                    refused = other.post("/generate", json={"prompt": "x", "max_new_tokens": 2})
                    assert refused.status_code == 503 and "retry-after" in refused.headers
                events = parse_sse(list(lines))
        assert events[-1][0] == "done"
        assert json.loads(events[-1][1])["usage"]["completion_tokens"] == 30
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_failed_start_exits_non_zero(tiny_world: TinyWorld, tmp_path: Path) -> None:
    broken = TinyWorld(model=tmp_path / "no-model", sae=tiny_world.sae, catalog=tiny_world.catalog)
    proc = _spawn(broken, _free_port())
    try:
        assert proc.wait(timeout=90) == 1
        out = proc.stdout.read().decode() if proc.stdout else ""
        assert "startup failed" in out
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
