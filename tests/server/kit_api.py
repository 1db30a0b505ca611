"""API behaviour every engine must show, as checks over a running server, so that the native suites and the vLLM
engine's (tests/vllm) assert the same things: the catalog and its steered model ids, an unknown vector, /generate
as JSON and as SSE, `n` and seeds on the OpenAI routes, 422s for what the server does not support, and /ready and
/metrics naming the engine. Imported by package path (`tests.server.kit_api`)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import httpx
import openai

from tests.server.kit_server import parse_sse

# Non-neutral values of OpenAI fields the server does not implement, and a typo: each is a 422 naming the field.
UNSUPPORTED: list[tuple[str, str, Any]] = [
    ("completions", "frequency_penalty", 0.5),
    ("completions", "presence_penalty", -1.0),
    ("completions", "logit_bias", {"5": 10}),
    ("completions", "best_of", 3),
    ("completions", "suffix", " tail"),
    ("completions", "logprobs", True),
    ("completions", "stenght", 2),  # a typo is never silently ignored
    ("chat/completions", "tools", [{"type": "function", "function": {"name": "f"}}]),
    ("chat/completions", "tool_choice", "required"),
    ("chat/completions", "response_format", {"type": "json_object"}),
    ("chat/completions", "presence_penalty", 0.1),
    ("chat/completions", "functions", [{"name": "f"}]),
]


@dataclass(frozen=True)
class Api:
    """A running server as the checks see it: its HTTP client (base URL set), served model name, a catalog
    vector that steers, a prompt, and which engine serves it."""

    http: httpx.Client
    model: str
    vector: str
    prompt: str
    backend: str = "native"
    strength: float = 3.0

    @property
    def oai(self) -> openai.OpenAI:
        base = str(self.http.base_url).rstrip("/")
        return openai.OpenAI(base_url=f"{base}/v1", api_key="unused", max_retries=0)


def error_of(response: httpx.Response, status: int = 422) -> dict[str, Any]:
    assert response.status_code == status, response.text
    error: dict[str, Any] = response.json()["error"]
    return error


def check_unsupported_is_a_422(api: Api, route: str, field: str, value: Any) -> None:
    body: dict[str, Any] = {"model": api.model, "max_tokens": 2, field: value}
    body.update(
        {"prompt": api.prompt}
        if route == "completions"
        else {"messages": [{"role": "user", "content": "hi"}]}
    )
    err = error_of(api.http.post(f"/v1/{route}", json=body))
    assert err["param"] == field or err["param"].startswith(field), err
    if field not in ("stenght", "functions", "logprobs"):
        assert "not supported" in err["message"]


def check_catalog_and_model_ids(api: Api) -> None:
    """`GET /vectors` lists the vector; `/v1/models` has the base id and one steered id per catalog vector."""
    names = [v["name"] for v in api.http.get("/vectors").json()["vectors"]]
    assert api.vector in names and names == sorted(names)
    assert api.http.get(f"/vectors/{api.vector}").json()["name"] == api.vector
    ids = [m.id for m in api.oai.models.list().data]
    assert ids == [api.model, *(f"{api.model}:{name}" for name in names)]


def check_unknown_vector_is_a_422(api: Api) -> None:
    r = api.http.post("/generate", json={"prompt": api.prompt, "steer": {"nope/missing": 1.0}})
    err = error_of(r)
    assert err["type"] == "unknown_vector" and err["param"] == "steer.nope/missing", err
    body = {"model": api.model, "prompt": api.prompt, "max_tokens": 2, "steer": {"nope/missing": 1.0}}
    assert error_of(api.http.post("/v1/completions", json=body))["param"] == "steer.nope/missing"
    assert error_of(api.http.post("/v1/completions", json={**body, "model": "gpt-4"}), 404)


def check_stream_matches_json(api: Api, max_new_tokens: int = 12) -> None:
    """/generate as server-sent events: the token events add up to the JSON answer's text, and the `done` event
    carries its usage, comparison text and steering."""
    steer = {api.vector: api.strength}
    body = {"prompt": api.prompt, "steer": steer, "max_new_tokens": max_new_tokens, "compare": True}
    full = api.http.post("/generate", json=body).json()
    with api.http.stream("POST", "/generate", json={**body, "stream": True}) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        events = parse_sse(list(r.iter_lines()))
    tokens = [json.loads(d)["text"] for e, d in events if e == "token"]
    assert len(tokens) >= 2
    assert "".join(tokens) == full["text"]
    kind, data = events[-1]
    assert kind == "done"
    done = json.loads(data)
    assert done["usage"] == full["usage"] and done["unsteered_text"] == full["unsteered_text"]
    assert done["steer"][0]["name"] == api.vector


def check_choices_and_seeds(api: Api) -> None:
    """`n` choices: greedy ones are identical (the prompt counted once); seeded ones are independent samples,
    reproducible, and choice i is the single request with seed + i."""
    steer = {"steer": {api.vector: api.strength}}
    msgs = [{"role": "user", "content": "What do you eat at a wedding?"}]

    def chat(**kw: Any) -> Any:
        args: dict[str, Any] = {"model": api.model, "messages": msgs, "max_tokens": 8, "temperature": 0, **kw}
        return api.oai.chat.completions.create(**args, extra_body=steer)

    def complete(**kw: Any) -> Any:
        args: dict[str, Any] = {"model": api.model, "prompt": api.prompt, "max_tokens": 8, **kw}
        return api.oai.completions.create(**args, extra_body=steer)

    one, three = chat(), chat(n=3)
    assert [c.index for c in three.choices] == [0, 1, 2]
    assert {c.message.content for c in three.choices} == {one.choices[0].message.content}
    assert three.usage.prompt_tokens == one.usage.prompt_tokens
    assert three.usage.completion_tokens == 3 * one.usage.completion_tokens
    kw = {"temperature": 1.0, "seed": 1234}
    texts = [c.text for c in complete(n=3, **kw).choices]
    assert len(set(texts)) > 1
    assert [c.text for c in complete(n=3, **kw).choices] == texts
    for i, text in enumerate(texts):
        assert complete(temperature=1.0, seed=1234 + i).choices[0].text == text
    msgs_n = [c.message.content for c in chat(n=2, **kw).choices]
    assert msgs_n == [chat(temperature=1.0, seed=1234 + i).choices[0].message.content for i in range(2)]


def check_ready_and_metrics_name_the_engine(api: Api) -> None:
    ready = api.http.get("/ready")
    assert ready.status_code == 200 and ready.json()["status"] == "ready"
    assert ready.json()["engine"]["backend"] == api.backend
    (info,) = [
        line for line in api.http.get("/metrics").text.splitlines() if line.startswith("steer_engine_info{")
    ]
    assert f'backend="{api.backend}"' in info and info.endswith(" 1.0")


CHECKS = {
    "catalog_and_model_ids": check_catalog_and_model_ids,
    "unknown_vector": check_unknown_vector_is_a_422,
    "stream_matches_json": check_stream_matches_json,
    "choices_and_seeds": check_choices_and_seeds,
    "ready_and_metrics": check_ready_and_metrics_name_the_engine,
}
