"""End to end on the culture world: a trained YaPO vector is served from its catalog, and a served vector moves
held-out answers toward its country exactly as the same steering does in process.

What a training run learns differs between CPUs (floating point), so no assertion here rests on it: the vector
whose effect is checked is measured inside the test (docs/culture-results.md reports what training achieves)."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.server.kit_server import run_server, settings_for
from tests.server.kit_world import TinyWorld as World

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


PROBE = f"probe/{COUNTRY}-direction"
CANDIDATE_STRENGTHS = (1.0, 2.0, 4.0, 8.0)


def _last_residuals(model: Any, tokenizer: Any, prompts: list[str], layer: int) -> Any:
    """The residual stream after block `layer` at each prompt's last position, [len(prompts), d_model]."""
    import torch

    from vectors.hooks import layer_hook

    seen: list[Any] = []

    def record(h: Any) -> Any:
        seen.append(h[0, -1].detach().clone())
        return h

    with torch.no_grad(), layer_hook(model, layer, record):
        for prompt in prompts:
            model(**tokenizer(prompt, return_tensors="pt"))
    return torch.stack(seen)


def _reference_answers(
    model: Any, tokenizer: Any, items: list[dict[str, Any]], layer: int, delta: Any
) -> list:
    """Greedy answers of Hugging Face `generate` with `delta` added to the prompt's residual stream only."""
    import torch

    from vectors.hooks import layer_hook

    def steer_prompt(h: Any) -> Any:
        return h + delta.to(h.dtype) if h.shape[1] > 1 else h  # the prefill pass, not the decode steps

    answers = []
    with torch.no_grad(), layer_hook(model, layer, steer_prompt):
        for item in items:
            enc = tokenizer(item["prompt"], return_tensors="pt")
            out = model.generate(**enc, max_new_tokens=8, do_sample=False)
            text = tokenizer.decode(out[0, enc["input_ids"].shape[1] :], skip_special_tokens=True)
            answers.append(_answer_of(text, item["options"]))
    return answers


@pytest.fixture(scope="module")
def probe(culture: dict[str, Any], world_lm: Any) -> dict[str, Any]:
    """A dense vector whose effect is measured here, not hoped for from a training run: the mean residual of the
    train topics' localized COUNTRY prompts minus that of their non-localized prompts, at the strength (among
    CANDIDATE_STRENGTHS) whose in-process greedy answers on the held-out items are most often COUNTRY's.

    Written into the served catalog (the server polls it) with the in-process answers the server must reproduce."""
    import torch

    from vectors.io import read_metadata, save_vector
    from vectors.metadata import VectorMetadata, dense_hook_name
    from vectors.names import vector_path
    from vectors.vector import SteeringVector

    model, tokenizer = world_lm
    root, layer = culture["root"], int(culture["summary"]["sae"]["layer"])
    rows = [
        json.loads(line) for line in (root / "data" / "mcq.jsonl").read_text().splitlines() if line.strip()
    ]
    train = [r for r in rows if r["split"] == "train"]
    localized = sorted({r["prompt"] for r in train if r["localized"] and r["country"] == COUNTRY})
    plain = sorted({r["prompt"] for r in train if not r["localized"]})
    direction = _last_residuals(model, tokenizer, localized, layer).mean(0) - _last_residuals(
        model, tokenizer, plain, layer
    ).mean(0)
    items = _held_out(root)
    unsteered = _reference_answers(model, tokenizer, items, layer, torch.zeros_like(direction))
    by_strength = {
        s: _reference_answers(model, tokenizer, items, layer, s * direction) for s in CANDIDATE_STRENGTHS
    }
    best = max(CANDIDATE_STRENGTHS, key=lambda s: (by_strength[s].count(COUNTRY), -s))
    moved, before = by_strength[best].count(COUNTRY), unsteered.count(COUNTRY)
    assert moved > before, (
        f"no strength of the localized-minus-plain direction moved a held-out answer toward {COUNTRY} "
        f"({before} of {len(items)} unsteered): the world did not learn to carry its countries"
    )
    trained = read_metadata(vector_path(culture["catalog"], f"culture/{COUNTRY}"))
    meta = VectorMetadata(
        name=PROBE,
        method="caa",
        space="dense",
        layer=layer,
        hook_name=dense_hook_name(layer),
        model=trained.model,
        strength_range=(0.0, max(CANDIDATE_STRENGTHS)),
    )
    save_vector(SteeringVector.dense_vector(meta, direction), vector_path(culture["catalog"], PROBE))
    return {"items": items, "strength": best, "steered": by_strength[best], "unsteered": unsteered}


def test_served_steering_moves_held_out_answers_toward_the_country(
    server: Any, probe: dict[str, Any]
) -> None:
    """The served vector moves held-out answers toward its country exactly as the in-process reference does."""
    with httpx.Client(base_url=server.url, timeout=120) as c:
        deadline = time.monotonic() + 30
        while PROBE not in [v["name"] for v in c.get("/vectors").json()["vectors"]]:
            assert time.monotonic() < deadline, f"{PROBE} never appeared in the catalog"
            time.sleep(0.2)
        steered, unsteered = [], []
        # The world's MCQ scores the answer right after the prompt, so steer the prompt (as the paper's MCQ does).
        for item in probe["items"]:
            body = {
                "prompt": item["prompt"],
                "max_new_tokens": 8,
                "steer": {PROBE: probe["strength"]},
                "apply": "prompt",
                "compare": True,
            }
            out = c.post("/generate", json=body).json()
            steered.append(_answer_of(out["text"], item["options"]))
            unsteered.append(_answer_of(out["unsteered_text"], item["options"]))
    print(
        f"{PROBE}@{probe['strength']:g}: {steered.count(COUNTRY)} of {len(steered)} held-out answers "
        f"{COUNTRY}'s, {unsteered.count(COUNTRY)} unsteered"
    )
    assert unsteered == probe["unsteered"]
    assert steered == probe["steered"]
    assert steered.count(COUNTRY) > unsteered.count(COUNTRY), (probe["strength"], steered, unsteered)
