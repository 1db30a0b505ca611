"""OpenAI routes with several choices, through the real `openai` client: prompt lists, `n`, seeds, limits,
streaming indices, and a failing or abandoned choice taking the whole request down."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest

from server.engine.model import LoadedModel
from tests.server.kit_api import Api, check_choices_and_seeds
from tests.server.kit_server import parse_sse, run_server, settings_for
from tests.server.kit_world import TinyWorld

PROMPTS = ["At a wedding we eat", "Hello", "Children play"]
STEER = {"demo/delta": 4.0}
MODEL = "tiny"


@pytest.fixture(scope="module")
def server(tiny_world: TinyWorld, tiny_engine: LoadedModel) -> Iterator[Any]:
    settings = settings_for(tiny_world, model_name=MODEL)
    with run_server(settings, engine=tiny_engine, faults=True) as running:
        yield running


@pytest.fixture(scope="module")
def slow(tiny_world: TinyWorld, tiny_engine: LoadedModel) -> Iterator[Any]:
    """Two batch rows, decode steps of >= 30 ms: a request stays in flight long enough to be cut short."""
    settings = settings_for(tiny_world, model_name=MODEL, max_batch=2)
    with run_server(settings, engine=tiny_engine, faults=True, step_delay_s=0.03) as running:
        yield running


def client_of(server: Any) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0)


@pytest.fixture(scope="module")
def oai(server: Any) -> openai.OpenAI:
    return client_of(server)


def complete(oai: openai.OpenAI, prompt: str | list[str], **kw: Any) -> Any:
    args: dict[str, Any] = {"model": MODEL, "prompt": prompt, "max_tokens": 8, "temperature": 0, **kw}
    return oai.completions.create(**args, extra_body={"steer": STEER})


def chat(oai: openai.OpenAI, **kw: Any) -> Any:
    msgs = [{"role": "user", "content": "What do you eat at a wedding?"}]
    args: dict[str, Any] = {"model": MODEL, "messages": msgs, "max_tokens": 8, "temperature": 0, **kw}
    return oai.chat.completions.create(**args, extra_body={"steer": STEER})


def metric(client: httpx.Client, name: str) -> float:
    lines = client.get("/metrics").text.splitlines()
    return sum(float(line.split()[-1]) for line in lines if line.startswith((name + " ", name + "{")))


def wait_idle(client: httpx.Client, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while (ready := client.get("/ready").json())["running"] or ready["queue_depth"]:
        assert time.monotonic() < deadline, ready
        time.sleep(0.02)


# --- prompt lists and n ---------------------------------------------------------------------------------------


def test_prompt_list_gives_each_prompt_its_solo_answer_in_order(oai: openai.OpenAI) -> None:
    solo = [complete(oai, p) for p in PROMPTS]
    both = complete(oai, PROMPTS)
    assert [c.index for c in both.choices] == [0, 1, 2]
    assert [c.text for c in both.choices] == [s.choices[0].text for s in solo]
    assert [c.finish_reason for c in both.choices] == [s.choices[0].finish_reason for s in solo]
    assert both.usage.prompt_tokens == sum(s.usage.prompt_tokens for s in solo)
    assert both.usage.completion_tokens == sum(s.usage.completion_tokens for s in solo)
    assert both.usage.total_tokens == both.usage.prompt_tokens + both.usage.completion_tokens
    assert both.model_extra["steer"] == solo[0].model_extra["steer"]


def test_greedy_choices_are_identical_and_seeded_ones_reproduce(server: Any) -> None:
    with server.client() as http:
        check_choices_and_seeds(Api(http, model=MODEL, vector="demo/delta", prompt=PROMPTS[0], strength=4.0))


def test_prompts_times_n_are_prompt_major(oai: openai.OpenAI) -> None:
    out = complete(oai, PROMPTS[:2], n=2, temperature=1.0, seed=99)
    assert [c.index for c in out.choices] == [0, 1, 2, 3]
    expected = [
        complete(oai, p, temperature=1.0, seed=99 + j).choices[0].text for p in PROMPTS[:2] for j in range(2)
    ]
    assert [c.text for c in out.choices] == expected


# --- limits ---------------------------------------------------------------------------------------------------


def rejected(call: Any) -> dict[str, Any]:
    with pytest.raises(openai.UnprocessableEntityError) as e:
        call()
    return e.value.body


def test_choice_limits_are_422s_naming_the_field(oai: openai.OpenAI, server: Any) -> None:
    assert server.runtime.settings.max_choices_per_request == 8
    with httpx.Client(base_url=server.url) as c:
        assert c.get("/ready").json()["limits"]["max_choices_per_request"] == 8
    err = rejected(lambda: complete(oai, PROMPTS[0], n=9))
    assert err["param"] == "n" and "8" in err["message"]
    err = rejected(lambda: chat(oai, n=9))
    assert err["param"] == "n"
    err = rejected(lambda: complete(oai, PROMPTS, n=3))  # 9 choices
    assert err["param"] == "prompt" and "9 choices" in err["message"] and "8" in err["message"]
    assert rejected(lambda: complete(oai, PROMPTS[0], n=0))["param"] == "n"
    assert rejected(lambda: complete(oai, []))["param"] == "prompt"


def test_token_id_prompts_are_checked_against_the_vocabulary(
    oai: openai.OpenAI, tiny_engine: LoadedModel
) -> None:
    vocab = len(tiny_engine.tokenizer)
    for prompt in ([1, vocab], [[1, 2], [3, vocab + 7]]):
        err = rejected(lambda p=prompt: complete(oai, p))
        assert err["param"] == "prompt" and "outside the vocabulary" in err["message"]
    assert len(complete(oai, [[1, 2], [3]]).choices) == 2


def test_more_choices_than_batch_rows_is_a_422(slow: Any) -> None:
    oai = client_of(slow)
    err = rejected(lambda: complete(oai, PROMPTS[0], n=3))
    assert err["param"] == "n" and "max_batch is 2" in err["message"]
    assert rejected(lambda: complete(oai, PROMPTS))["param"] == "prompt"
    assert len(complete(oai, PROMPTS[:2], max_tokens=2).choices) == 2  # exactly max_batch rows fit


# --- streaming ------------------------------------------------------------------------------------------------


def test_stream_with_two_choices_carries_indices(oai: openai.OpenAI) -> None:
    full = chat(oai, n=2)
    chunks = list(chat(oai, n=2, stream=True, stream_options={"include_usage": True}))
    parts = [ch.choices[0] for ch in chunks if ch.choices]
    assert [p.delta.role for p in parts[:2]] == ["assistant", "assistant"]
    assert [p.index for p in parts[:2]] == [0, 1]
    for i, choice in enumerate(full.choices):
        assert "".join(p.delta.content or "" for p in parts if p.index == i) == choice.message.content
        assert [p.finish_reason for p in parts if p.index == i and p.finish_reason] == [choice.finish_reason]
    assert chunks[-1].choices == [] and chunks[-1].usage == full.usage


def test_stream_of_a_prompt_list_ends_with_one_done(server: Any, oai: openai.OpenAI) -> None:
    full = complete(oai, PROMPTS[:2], n=2)
    body = {"model": MODEL, "prompt": PROMPTS[:2], "n": 2, "max_tokens": 8, "temperature": 0, "stream": True}
    body |= {"stream_options": {"include_usage": True}, "steer": STEER}
    with (
        httpx.Client(base_url=server.url, timeout=60) as c,
        c.stream("POST", "/v1/completions", json=body) as r,
    ):
        assert r.status_code == 200
        data = [d for _, d in parse_sse(list(r.iter_lines()))]
    assert data.count("[DONE]") == 1 and data[-1] == "[DONE]"
    chunks = [json.loads(d) for d in data[:-1]]
    texts = [
        "".join(ch["choices"][0]["text"] for ch in chunks if ch["choices"] and ch["choices"][0]["index"] == i)
        for i in range(4)
    ]
    assert texts == [c.text for c in full.choices]
    assert chunks[-1]["usage"] == full.usage.model_dump(exclude_none=True)


# --- failures -------------------------------------------------------------------------------------------------


def test_a_failing_choice_fails_the_request(server: Any, oai: openai.OpenAI) -> None:
    prompts = [PROMPTS[0], "boom [[fault:error]]"]
    with pytest.raises(openai.InternalServerError) as e:
        complete(oai, prompts, max_tokens=30)
    assert e.value.body["type"] == "internal_error"
    stream = complete(oai, prompts, max_tokens=30, stream=True)
    with pytest.raises(openai.APIError, match="generation failed"):
        list(stream)
    body = {"model": MODEL, "prompt": prompts, "max_tokens": 30, "stream": True}
    with httpx.Client(base_url=server.url, timeout=60) as c:
        with c.stream("POST", "/v1/completions", json=body) as r:
            data = [d for _, d in parse_sse(list(r.iter_lines()))]
        assert data[-1] == "[DONE]" and data.count("[DONE]") == 1
        assert json.loads(data[-2])["error"]["code"] == 500
        assert not any(
            ch["choices"][0].get("finish_reason") for ch in map(json.loads, data[:-2]) if "choices" in ch
        )
        wait_idle(c)
    assert complete(oai, PROMPTS[:2]).choices[1].text  # the server serves on


def test_a_failed_choice_stops_its_siblings(slow: Any) -> None:
    """A decode-step fault fails one choice; the other is stopped then, not left to run its 60 tokens."""
    with httpx.Client(base_url=slow.url, timeout=60) as c:
        cancelled = 'steer_request_failures_total{reason="cancelled"}'
        before, gone = metric(c, cancelled), metric(c, "steer_client_disconnects_total")
        body = {
            "model": MODEL,
            "prompt": [PROMPTS[0], "x [[fault:step]]"],
            "max_tokens": 60,
            "temperature": 0,
        }
        r = c.post("/v1/completions", json=body)
        assert r.status_code == 500 and r.json()["error"]["type"] == "internal_error"
        wait_idle(c)
        assert metric(c, cancelled) == before + 1
        assert metric(c, "steer_client_disconnects_total") == gone  # not a disconnect


def test_leaving_a_stream_cancels_every_choice(slow: Any) -> None:
    with httpx.Client(base_url=slow.url, timeout=60) as c:
        cancelled = 'steer_request_failures_total{reason="cancelled"}'
        before, gone = metric(c, cancelled), metric(c, "steer_client_disconnects_total")
        body = {
            "model": MODEL,
            "prompt": PROMPTS[0],
            "n": 2,
            "max_tokens": 60,
            "temperature": 0,
            "stream": True,
        }
        with c.stream("POST", "/v1/completions", json=body) as r:
            for line in r.iter_lines():
                if line.startswith("data:"):
                    break  # one token seen; leave
        wait_idle(c)
        assert metric(c, cancelled) == before + 2
        assert metric(c, "steer_client_disconnects_total") == gone + 1


def _metric(server: Any, name: str) -> float:
    text = httpx.get(f"{server.url}/metrics").text
    return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith(name + " "))


def test_metrics_count_every_row_and_one_request(server: Any, oai: openai.OpenAI) -> None:
    """Two prompts × two choices: four rows prefilled, one request latency and one time to first token."""
    before = {
        n: _metric(server, n)
        for n in (
            "steer_prompt_tokens_total",
            "steer_e2e_request_latency_seconds_count",
            "steer_time_to_first_token_seconds_count",
            "steer_generation_tokens_total",
        )
    }
    out = complete(oai, PROMPTS[:2], n=2)
    assert len(out.choices) == 4
    delta = {n: _metric(server, n) - v for n, v in before.items()}
    assert delta["steer_prompt_tokens_total"] == 2 * out.usage.prompt_tokens  # each prompt prefilled twice
    assert delta["steer_e2e_request_latency_seconds_count"] == 1
    assert delta["steer_time_to_first_token_seconds_count"] == 1
    assert delta["steer_generation_tokens_total"] == out.usage.completion_tokens
