"""Fixtures for the playground tests: the real server (tests/server helpers) on 127.0.0.1 with a tiny world
whose vectors visibly change the text, and Debian's headless Chromium driven by Playwright.

CI needs: the Debian package `chromium` (at /usr/bin/chromium, or set STEER_CHROMIUM) and the pip package
`playwright` (only its Python driver; no `playwright install`, no browser download).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.playground.kit_catalog import VECTORS
from tests.server.kit_server import run_server, settings_for
from tests.server.kit_world import TinyWorld, make_vector, save_tiny_model, save_tiny_sae

KEY = "playground-key"
CHROMIUM = os.environ.get("STEER_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture(scope="session")
def playground_world(tmp_path_factory: pytest.TempPathFactory) -> Any:

    from vectors.io import save_vector
    from vectors.names import vector_path

    root = tmp_path_factory.mktemp("playground-world")
    world = TinyWorld(
        model=save_tiny_model(root / "model"), sae=save_tiny_sae(root / "sae"), catalog=root / "vectors"
    )
    world.catalog.mkdir()
    for name, (kind, seed, meta) in VECTORS.items():
        vector = make_vector(None, name, kind=kind, seed=seed, **meta)  # SAE source: "tiny-sae"
        save_vector(vector, vector_path(world.catalog, name))
    return world


@pytest.fixture(scope="session")
def server(playground_world: Any) -> Iterator[Any]:
    """The real app under uvicorn, with an API key and a small per-step delay so streaming is observable."""
    settings = settings_for(playground_world, api_key=KEY, max_new_tokens=64)
    with run_server(settings, step_delay_s=0.02) as running:
        yield running


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Chromium for one test module: Playwright's sync driver keeps an event loop marked running in this
    thread while it is open, which would break later tests that call `asyncio.run`."""
    if not (Path(CHROMIUM).is_file() or shutil.which(CHROMIUM)):
        pytest.fail(
            f"Chromium not found at {CHROMIUM}: install Debian's `chromium` package (apt-get install -y chromium)"
            " or set STEER_CHROMIUM to its path"
        )
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail(
            "the Python package `playwright` is missing: pip install playwright (no `playwright install`)"
        )
    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture
def page(browser: Any, server: Any) -> Iterator[Any]:
    """A fresh page (own storage) at the playground, key not yet typed."""
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    pg = context.new_page()
    pg.set_default_timeout(20_000)
    errors: list[str] = []
    pg.on("pageerror", lambda exc: errors.append(str(exc)))
    pg.goto(f"{server.url}/")
    try:
        yield pg
        assert not errors, f"JavaScript errors on the page: {errors}"
    finally:
        context.close()


@pytest.fixture
def ready_page(page: Any) -> Any:
    """The playground with the API key typed in and the catalog loaded."""
    key = page.get_by_label("API key")
    key.fill(KEY)
    key.blur()
    page.locator("#catalog .entry").first.wait_for()
    return page


@pytest.fixture
def api(server: Any) -> Iterator[Any]:
    """An httpx client for the same server, with the key."""
    with server.client(headers={"Authorization": f"Bearer {KEY}"}) as client:
        yield client
