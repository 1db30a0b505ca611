"""A second family end to end: a Qwen2.5-Instruct look-alike (its real chat template, default system prompt
included) with an sae-lens SAE folder: `steer train` → the server → chat through `openai` and `/generate`."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from server.settings import ServerSettings
from tests.hub.kit_hub_home import QWEN_D_SAE, QWEN_ID, QWEN_LAYER, QWEN_WIDTH, HubHome
from tests.hub.kit_serve import serve_in_process, steer
from vectors.io import read_metadata

VECTOR = "culture/morocco"
PROMPT = "In the morning people drink"


@pytest.fixture(scope="module")
def catalog(offline_hub: HubHome, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A YaPO vector trained by `steer train` on the look-alike's hub id and the SAE folder."""
    out = tmp_path_factory.mktemp("qwen-catalog")
    argv = ["train", "--method", "yapo", "--model", QWEN_ID, "--sae", str(offline_hub.qwen_sae)]
    argv += ["--data", str(offline_hub.pairs), "--name", VECTOR, "--target", "morocco", "--out", str(out)]
    argv += ["--max-steps", "4", "--batch-size", "3", "--lr", "0.1", "--no-progress"]
    argv += ["--log-dir", str(out.parent / "qwen-train-logs")]
    summary = json.loads(steer(argv))
    assert (summary["steps"], summary["device"], summary["dtype"]) == (4, "cpu", "float32")  # auto on a CPU
    return out


@pytest.fixture(scope="module")
def url(offline_hub: HubHome, catalog: Path) -> Iterator[str]:
    settings = ServerSettings(
        model=QWEN_ID, sae=[str(offline_hub.qwen_sae)], vectors=str(catalog), device="cpu", max_new_tokens=16
    )
    with serve_in_process(settings) as running:
        yield running


def test_trained_vector_describes_the_model(catalog: Path, offline_hub: HubHome) -> None:
    meta = read_metadata(catalog / "culture" / "morocco.safetensors")
    assert (meta.model.name, meta.model.hidden_size, meta.layer) == (QWEN_ID, QWEN_WIDTH, QWEN_LAYER)
    assert (meta.sae.source, meta.sae.d_sae) == (str(offline_hub.qwen_sae), QWEN_D_SAE)


def test_the_template_default_system_prompt_is_not_injected(offline_hub: HubHome) -> None:
    from transformers import AutoTokenizer

    from vectors.prompts import format_prompt

    tok = AutoTokenizer.from_pretrained(QWEN_ID)
    text = tok.decode(format_prompt(tok, prompt=PROMPT))
    assert "Qwen" not in text and text.startswith("<|im_start|>system\n<|im_end|>\n<|im_start|>user\n")
    given = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": PROMPT}]
    assert "<|im_start|>system\nBe brief.<|im_end|>" in tok.decode(format_prompt(tok, messages=given))


def test_chat_with_the_trained_vector(url: str) -> None:
    assert VECTOR in {v["name"] for v in httpx.get(f"{url}/vectors").json()["vectors"]}
    client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
    model = client.models.list().data[0].id
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": PROMPT}]
    reply = client.chat.completions.create(
        model=model, messages=messages, max_tokens=8, temperature=0, extra_body={"steer": {VECTOR: 1.0}}
    )
    assert reply.choices[0].message.content and reply.usage.completion_tokens >= 1
    pieces = client.chat.completions.create(
        model=model,
        messages=messages,
        max_tokens=8,
        temperature=0,
        stream=True,
        extra_body={"steer": {"sae:3": 8.0}},
    )
    assert "".join(c.choices[0].delta.content or "" for c in pieces if c.choices)
    # Qwen's template takes two user turns in a row: the server imposes no rule of its own.
    twice = [{"role": "user", "content": "a"}, {"role": "user", "content": PROMPT}]
    body = {"messages": twice, "steer": {VECTOR: 1.0}, "compare": True, "max_new_tokens": 8}
    r = httpx.post(f"{url}/generate", json=body, timeout=60)
    assert r.status_code == 200, r.text
    assert r.json()["steer"][0]["name"] == VECTOR and r.json()["unsteered_text"] is not None
