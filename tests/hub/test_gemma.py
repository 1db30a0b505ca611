"""The paper's setup, end to end and offline: Gemma-2-2B-it + Gemma Scope by their hub ids (docs/deploy.md).

`steer serve --model google/gemma-2-2b-it --sae gemma-scope-2b-pt-res-canonical/layer_1/width_16k/canonical`
runs as a process with HF_HOME at the look-alike; `steer train` (YaPO) and `steer eval` write a vector into
its catalog, which it picks up without a restart; then the README's requests: `/generate` with a prompt and
with messages, streaming, `sae:<feature>`, `GET /vectors`, and `/v1/chat/completions` through `openai`.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from tests.hub.kit_hub_home import GEMMA_ID, GEMMA_WIDTH, SCOPE_D_SAE, SCOPE_LAYER, SCOPE_SAE, HubHome
from tests.hub.kit_serve import ServeProcess, steer, steer_serve
from vectors.io import read_metadata

VECTOR = "culture/morocco"
PROMPT = "At a wedding we eat"


@pytest.fixture(scope="module")
def catalog(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("gemma-catalog")


@pytest.fixture(scope="module")
def server(
    offline_hub: HubHome, catalog: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServeProcess]:
    """Started first, so that it loads while `steer train` runs in this process."""
    args = ["--model", GEMMA_ID, "--sae", SCOPE_SAE, "--vectors", str(catalog), "--max-new-tokens", "16"]
    env = {**offline_hub.env(), "STEER_CATALOG_POLL_S": "0.3", "STEER_DEVICE": "cpu"}
    with steer_serve(args, env, tmp_path_factory.mktemp("gemma-log") / "serve.log") as proc:
        yield proc


@pytest.fixture(scope="module")
def trained(server: ServeProcess, offline_hub: HubHome, catalog: Path) -> dict[str, Any]:
    """`steer train` (YaPO, 3 steps) by the hub ids, in bf16 because STEER_DTYPE says so, then `steer eval`."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("STEER_DTYPE", "bfloat16")
        argv = ["train", "--method", "yapo", "--model", GEMMA_ID, "--sae", SCOPE_SAE, "--data"]
        argv += [str(offline_hub.pairs), "--name", VECTOR, "--target", "morocco", "--out", str(catalog)]
        argv += ["--max-steps", "3", "--batch-size", "3", "--lr", "0.05", "--no-progress"]
        argv += ["--log-dir", str(catalog.parent / "gemma-train-logs")]
        summary = json.loads(steer(argv))
    report = catalog.parent / "gemma-eval.json"
    argv = ["eval", "--model", GEMMA_ID, "--sae", SCOPE_SAE, "--catalog", str(catalog), "--vectors", VECTOR]
    argv += ["--data", str(offline_hub.mcq), "--strengths", "0,1", "--out", str(report), "--no-progress"]
    steer(argv)
    return {"summary": summary, "report": json.loads(report.read_text())}


@pytest.fixture(scope="module")
def ready(server: ServeProcess, trained: dict[str, Any]) -> ServeProcess:
    server.wait_ready()
    deadline = time.monotonic() + 30  # hot reload: the vector was written after the server started
    while VECTOR not in {v["name"] for v in httpx.get(f"{server.url}/vectors").json()["vectors"]}:
        assert time.monotonic() < deadline, "the trained vector never appeared in GET /vectors"
        time.sleep(0.2)
    return server


def test_train_and_eval_by_hub_ids(trained: dict[str, Any], catalog: Path) -> None:
    summary = trained["summary"]
    assert (summary["steps"], summary["device"], summary["dtype"]) == (3, "cpu", "bfloat16")
    meta = read_metadata(catalog / "culture" / "morocco.safetensors")
    assert meta.method == "yapo" and meta.space == "sae" and meta.layer == SCOPE_LAYER
    assert (meta.model.name, meta.model.hidden_size, meta.model.num_layers) == (GEMMA_ID, GEMMA_WIDTH, 3)
    assert (meta.sae.source, meta.sae.d_sae, meta.sae.architecture) == (SCOPE_SAE, SCOPE_D_SAE, "jumprelu")
    hyper = meta.training.hyperparameters
    assert hyper is not None and hyper.dtype == "bfloat16"
    assert set(trained["report"]["vectors"][VECTOR]["by_strength"]) == {"0", "1"}
    assert meta.eval["target"] == "morocco"


def test_vectors_lists_the_hot_reloaded_vector(ready: ServeProcess) -> None:
    listing = httpx.get(f"{ready.url}/vectors").json()
    (entry,) = [v for v in listing["vectors"] if v["name"] == VECTOR]
    assert (entry["method"], entry["space"], entry["layer"]) == ("yapo", "sae", SCOPE_LAYER)
    assert entry["eval"] and entry["nnz"] > 0 and listing["skipped"] == []
    assert httpx.get(f"{ready.url}/ready").json()["model"] == "gemma-2-2b-it"


def test_generate_prompt_messages_and_stream(ready: ServeProcess) -> None:
    with httpx.Client(base_url=ready.url, timeout=60) as c:
        r = c.post("/generate", json={"prompt": PROMPT, "steer": {VECTOR: 1.0}, "max_new_tokens": 6})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["steer"][0]["name"] == VECTOR and body["usage"]["completion_tokens"] >= 1
        # A system turn Gemma's template refuses is folded into the first user turn: same tokens, same text.
        chat = {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": PROMPT}]}
        folded = {"messages": [{"role": "user", "content": f"Be brief.\n\n{PROMPT}"}]}
        one = c.post("/generate", json={**chat, "max_new_tokens": 6})
        two = c.post("/generate", json={**folded, "max_new_tokens": 6})
        assert one.status_code == two.status_code == 200, one.text
        assert one.json()["text"] == two.json()["text"]
        assert one.json()["usage"]["prompt_tokens"] == two.json()["usage"]["prompt_tokens"]
        # Two user turns in a row: the template's own words, a 422 naming messages, as JSON and as a stream.
        twice = [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]
        for stream in (False, True):
            bad = c.post("/generate", json={"messages": twice, "stream": stream})
            assert bad.status_code == 422, bad.text
            error = bad.json()["error"]
            assert error["param"] == "messages" and "Conversation roles must alternate" in error["message"]
        # The same connection keeps working after the refusals.
        with c.stream("POST", "/generate", json={**chat, "stream": True, "max_new_tokens": 4}) as s:
            assert s.status_code == 200
            events = [line for line in s.iter_lines() if line.startswith("event: ")]
        assert events.count("event: token") >= 1 and events[-1] == "event: done"


def test_sae_feature_steering(ready: ServeProcess) -> None:
    body = {"prompt": PROMPT, "steer": {"sae:123": 100.0}, "compare": True, "max_new_tokens": 8}
    r = httpx.post(f"{ready.url}/generate", json=body, timeout=60)
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["steer"][0]["layer"] == SCOPE_LAYER and out["steer"][0]["space"] == "sae"
    assert out["text"] != out["unsteered_text"], "a strong Gemma Scope feature left the text unchanged"
    bad = httpx.post(f"{ready.url}/generate", json={"prompt": PROMPT, "steer": {f"sae:{SCOPE_D_SAE}": 1.0}})
    assert bad.status_code == 422 and str(SCOPE_D_SAE) in bad.json()["error"]["message"]


def test_openai_chat_completions(ready: ServeProcess) -> None:
    client = openai.OpenAI(base_url=f"{ready.url}/v1", api_key="unused", max_retries=0)
    model = client.models.list().data[0].id
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": PROMPT}]
    reply = client.chat.completions.create(
        model=model, messages=messages, max_tokens=6, temperature=0, extra_body={"steer": {VECTOR: 1.0}}
    )
    assert reply.choices[0].message.content is not None and reply.usage.completion_tokens >= 1
    chunks = list(
        client.chat.completions.create(
            model=model,
            messages=messages,
            max_tokens=6,
            temperature=0,
            stream=True,
            extra_body={"steer": {"sae:7": 20.0}},
        )
    )
    assert chunks and chunks[-1].choices[0].finish_reason in ("stop", "length")
    with pytest.raises(openai.UnprocessableEntityError) as err:
        client.chat.completions.create(
            model=model, messages=[{"role": "assistant", "content": "hi"}], max_tokens=4
        )
    assert err.value.body["param"] == "messages"
    # The pooled connection is still usable after the error; the hub id (vLLM's default served name) is an
    # alias of the served model, and steers as a steered model id too.
    again = client.chat.completions.create(model=GEMMA_ID, messages=messages[1:], max_tokens=2)
    assert again.choices[0].finish_reason in ("stop", "length")
    steered = client.chat.completions.create(
        model=f"{GEMMA_ID}:{VECTOR}@1", messages=messages[1:], max_tokens=2, temperature=0
    )
    assert steered.choices[0].finish_reason in ("stop", "length")
