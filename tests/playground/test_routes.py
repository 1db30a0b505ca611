"""The playground's routes: the page and its files load without the key; the API behind them still needs it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx

from server.routes.playground import STATIC_DIR
from server.serving.vectors import sweep
from tests.playground.kit_catalog import SWEEP_EVAL

REPO = Path(__file__).resolve().parents[2]


def test_page_and_files_are_open_but_the_api_is_not(server: Any) -> None:
    with httpx.Client(base_url=server.url, timeout=30) as c:
        root = c.get("/")
        assert root.status_code == 307 and root.headers["location"] == "playground/"
        page = c.get("/playground/")
        assert page.status_code == 200 and "text/html" in page.headers["content-type"]
        assert "sparse-steer playground" in page.text
        for name in ("playground.js", "detail.js", "card.js", "playground.css"):
            assert c.get(f"/playground/{name}").status_code == 200, name
        assert c.get("/playground", follow_redirects=True).url.path == "/playground/"
        assert c.get("/playground/missing.js").status_code == 404
        for path in ("/vectors", "/ready", "/docs", "/playground-not/"):
            assert c.get(path).status_code == 401, path
        assert c.post("/generate", json={"prompt": "hi"}).status_code == 401


def test_static_files_are_package_data() -> None:
    """pyproject's `server = ["static/*"]` ships every file the page loads (no subfolders)."""
    assert 'server = ["static/*"]' in (REPO / "pyproject.toml").read_text()
    files = sorted(p.name for p in STATIC_DIR.iterdir())
    assert {"index.html", "playground.js", "detail.js", "card.js", "playground.css"} <= set(files)
    assert all((STATIC_DIR / f).is_file() for f in files)


def test_catalog_lists_each_vectors_sweep(api: Any) -> None:
    """GET /vectors carries what the cards draw: accuracy and retention per measured strength, by strength."""
    listing = {v["name"]: v for v in api.get("/vectors").json()["vectors"]}
    got = listing["culture/yapo-land"]["sweep"]
    assert [p["strength"] for p in got] == [0, 10, 20, 30]
    for point in got:
        at = f"{point['strength']:g}"
        assert point["accuracy"] == SWEEP_EVAL["heldout_accuracy"][at]
        assert point["retention"] == SWEEP_EVAL["retention"][at]
    assert listing["culture/yapo-land"]["eval"]["unsteered_heldout_accuracy"] == 0.31
    assert listing["culture/bipo-land"]["sweep"] == []


def test_sweep_of_partial_and_unreadable_records() -> None:
    record = {
        "target": "x",
        "data_split": "test",
        "heldout_accuracy": {"1": 0.5, "-1": 0.2},
        "retention": {"1": 0.9},
    }
    assert [(p.strength, p.accuracy, p.retention) for p in sweep(record)] == [
        (-1.0, 0.2, None),
        (1.0, 0.5, 0.9),
    ]
    assert sweep({}) == []
    assert sweep({"target": "x", "data_split": "test", "retention": [1, 2]}) == []  # `headline` says why
