"""End to end on the culture world: a trained YaPO vector, served, moves held-out answers toward its country."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import TinyWorld as World
from conftest import run_server, settings_for

pytestmark = pytest.mark.slow

COUNTRY = "morocco"


@pytest.fixture(scope="module")
def culture(world_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The session's small world, plus a YaPO vector for COUNTRY trained on the train topics into a private catalog."""
    from trainer.config import TrainConfig
    from trainer.train import train_vector

    root = world_dir
    catalog = tmp_path_factory.mktemp("culture-catalog")
    cfg = TrainConfig(
        method="yapo",
        model=str(root / "model"),
        sae=str(root / "sae"),
        data=str(root / "data" / "pairs" / f"{COUNTRY}.jsonl"),
        where={"split": "train"},
        name=f"culture/{COUNTRY}",
        out=str(catalog),
        max_steps=int(os.environ.get("STEER_TEST_YAPO_STEPS", "150")),
        lr=5e-3,
        warmup_steps=20,
        progress=False,
        target=COUNTRY,
    )
    train_vector(cfg)
    summary = json.loads((root / "world.json").read_text())
    return {"root": root, "catalog": catalog, "summary": summary}


@pytest.fixture(scope="module")
def server(culture: dict[str, Any]) -> Iterator[Any]:
    root = culture["root"]
    world = World(model=root / "model", sae=root / "sae", catalog=culture["catalog"])
    settings = settings_for(world, max_new_tokens=16, default_max_new_tokens=8, strength_policy="clamp")
    with run_server(settings) as running:
        yield running


def _held_out(root: Path) -> list[dict[str, Any]]:
    rows = [
        json.loads(line) for line in (root / "data" / "mcq.jsonl").read_text().splitlines() if line.strip()
    ]
    seen: dict[str, dict[str, Any]] = {}
    for r in rows:
        if r["split"] == "test" and not r["localized"]:
            seen.setdefault(r["prompt"], r)
    return list(seen.values())


def _answer_of(text: str, options: dict[str, str]) -> str | None:
    """The country whose answer the text starts with (a cut-off answer counts: 3+ characters agree)."""
    text = text.strip().lower()
    best, best_len = None, 2
    for country, answer in options.items():
        answer = answer.strip().lower()
        n = 0
        while n < min(len(text), len(answer)) and text[n] == answer[n]:
            n += 1
        if n > best_len and (n == len(answer) or n == len(text) or n >= 4):
            best, best_len = country, n
    return best


def test_catalog_lists_the_trained_vector(server: Any) -> None:
    listing = httpx.get(f"{server.url}/vectors").json()
    (entry,) = [v for v in listing["vectors"] if v["name"] == f"culture/{COUNTRY}"]
    assert entry["method"] == "yapo" and entry["space"] == "sae" and listing["skipped"] == []


def test_steering_moves_held_out_answers_toward_the_country(server: Any, culture: dict[str, Any]) -> None:
    items = _held_out(culture["root"])
    assert items, "the world has held-out non-localized prompts"
    name = f"culture/{COUNTRY}"
    strength = httpx.get(f"{server.url}/vectors/{name}").json()["summary"]["default_strength"]
    steered = unsteered = 0
    # The world's MCQ scores the answer right after the prompt, so steer the prompt (as the paper's MCQ does).
    with httpx.Client(base_url=server.url, timeout=120) as c:
        for item in items:
            body = {
                "prompt": item["prompt"],
                "max_new_tokens": 8,
                "steer": {name: strength},
                "apply": "prompt",
                "compare": True,
            }
            out = c.post("/generate", json=body).json()
            steered += _answer_of(out["text"], item["options"]) == COUNTRY
            unsteered += _answer_of(out["unsteered_text"], item["options"]) == COUNTRY
    assert steered > unsteered, (steered, unsteered, len(items))
    assert steered >= 0.5 * len(items), (steered, len(items))
