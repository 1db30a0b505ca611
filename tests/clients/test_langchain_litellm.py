"""LangChain (`ChatOpenAI`, `OpenAI` completions) and litellm (`openai/…`, `text-completion-openai/…`) against the
real server, plain, streaming, steered through `extra_body` and through a steered model id. Each sends its own
neutral values (LangChain's completions: `frequency_penalty: 0`, `presence_penalty: 0`, `logprobs: null`, ...).
Steering is checked by comparing with the server's own answer for the same request."""

from __future__ import annotations

import os

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # no cost-map download at import

import json
from typing import Any

import httpx
import pytest

PROMPT = "At a wedding we eat"
STEER = {"demo/delta": 4.0}
STEERED = "tiny:demo/delta@4"


def served(server: Any, route: str, **body: Any) -> str:
    """The server's own greedy answer (raw HTTP): what every client must get for the same request."""
    base = {"model": "tiny", "max_tokens": 8, "temperature": 0, **body}
    out = httpx.post(f"{server.url}/v1/{route}", json=base, timeout=60).json()
    choice = out["choices"][0]
    return choice["text"] if route == "completions" else choice["message"]["content"]


def chat_body(**kw: Any) -> dict[str, Any]:
    return {"messages": [{"role": "user", "content": PROMPT}], **kw}


# --- LangChain ------------------------------------------------------------------------------------------------


def lc_chat(server: Any, model: str = "tiny", **kw: Any) -> Any:
    from langchain_openai import ChatOpenAI

    return ChatOpenAI(
        model=model,
        base_url=f"{server.url}/v1",
        api_key="unused",
        temperature=0,
        max_tokens=8,
        max_retries=0,
        **kw,
    )


def lc_completions(server: Any, model: str = "tiny", **kw: Any) -> Any:
    from langchain_openai import OpenAI

    return OpenAI(
        model=model,
        base_url=f"{server.url}/v1",
        api_key="unused",
        temperature=0,
        max_tokens=8,
        max_retries=0,
        **kw,
    )


def test_langchain_chat_plain_stream_and_steered(tiny_server: Any) -> None:
    plain = served(tiny_server, "chat/completions", **chat_body())
    steered = served(tiny_server, "chat/completions", **chat_body(steer=STEER))
    assert plain != steered
    assert lc_chat(tiny_server).invoke(PROMPT).content == plain
    assert "".join(chunk.content for chunk in lc_chat(tiny_server).stream(PROMPT)) == plain
    assert lc_chat(tiny_server, extra_body={"steer": STEER}).invoke(PROMPT).content == steered
    assert lc_chat(tiny_server, model=STEERED).invoke(PROMPT).content == steered
    assert "".join(c.content for c in lc_chat(tiny_server, model=STEERED).stream(PROMPT)) == steered


def test_langchain_chat_message_shapes(tiny_server: Any) -> None:
    from langchain_core.messages import ChatMessage, HumanMessage, SystemMessage

    system = "Be brief."
    want = served(
        tiny_server,
        "chat/completions",
        messages=[{"role": "system", "content": system}, {"role": "user", "content": PROMPT}],
    )
    http, bodies = recording()
    llm = lc_chat(tiny_server, http_client=http)
    parts = [{"type": "text", "text": "At a wedding "}, {"type": "text", "text": "we eat"}]
    assert llm.invoke([SystemMessage(system), HumanMessage(PROMPT, name="ann")]).content == want
    assert llm.invoke([SystemMessage(system), HumanMessage(content=parts)]).content == want
    assert llm.invoke([ChatMessage(role="developer", content=system), HumanMessage(PROMPT)]).content == want
    sent = [b["messages"] for b in bodies]
    assert sent[0][1]["name"] == "ann"
    assert sent[1][1]["content"] == parts
    assert sent[2][0]["role"] == "developer"


def recording() -> tuple[httpx.Client, list[dict[str, Any]]]:
    """An httpx client for a LangChain model that keeps the JSON body of every request it sends."""
    bodies: list[dict[str, Any]] = []

    def keep(request: httpx.Request) -> None:
        bodies.append(json.loads(request.content))

    return httpx.Client(event_hooks={"request": [keep]}, timeout=60), bodies


def test_langchain_completions_plain_stream_and_steered(tiny_server: Any) -> None:
    plain = served(tiny_server, "completions", prompt=PROMPT)
    steered = served(tiny_server, "completions", prompt=PROMPT, steer=STEER)
    assert plain != steered
    http, bodies = recording()
    assert lc_completions(tiny_server, http_client=http).invoke(PROMPT) == plain
    sent = bodies[0]  # the neutral values LangChain always sends (each was a 422 before)
    assert sent["frequency_penalty"] == 0 and sent["presence_penalty"] == 0
    assert "logprobs" in sent and sent["logprobs"] is None and "seed" in sent and sent["seed"] is None
    assert "".join(lc_completions(tiny_server).stream(PROMPT)) == plain
    assert lc_completions(tiny_server, extra_body={"steer": STEER}).invoke(PROMPT) == steered
    assert lc_completions(tiny_server, model=STEERED).invoke(PROMPT) == steered


# --- litellm --------------------------------------------------------------------------------------------------


def test_litellm_chat_and_text_completion(tiny_server: Any) -> None:
    import litellm

    base = f"{tiny_server.url}/v1"
    msgs = [{"role": "user", "content": PROMPT}]
    kw: dict[str, Any] = {"api_base": base, "api_key": "unused", "max_tokens": 8, "temperature": 0}
    plain = served(tiny_server, "chat/completions", **chat_body())
    steered = served(tiny_server, "chat/completions", **chat_body(steer=STEER))
    assert litellm.completion(model="openai/tiny", messages=msgs, **kw).choices[0].message.content == plain
    out = litellm.completion(model=f"openai/{STEERED}", messages=msgs, **kw)
    assert out.choices[0].message.content == steered
    out = litellm.completion(model="openai/tiny", messages=msgs, extra_body={"steer": STEER}, **kw)
    assert out.choices[0].message.content == steered
    stream = litellm.completion(model=f"openai/{STEERED}", messages=msgs, stream=True, **kw)
    assert "".join(c.choices[0].delta.content or "" for c in stream) == steered

    text_plain = served(tiny_server, "completions", prompt=PROMPT)
    text_steered = served(tiny_server, "completions", prompt=PROMPT, steer=STEER)
    out = litellm.text_completion(model="text-completion-openai/tiny", prompt=PROMPT, **kw)
    assert out.choices[0].text == text_plain
    out = litellm.text_completion(model=f"text-completion-openai/{STEERED}", prompt=PROMPT, **kw)
    assert out.choices[0].text == text_steered


@pytest.mark.parametrize("field", ["frequency_penalty", "presence_penalty"])
def test_a_real_penalty_through_langchain_is_refused_by_name(tiny_server: Any, field: str) -> None:
    import openai

    with pytest.raises(openai.UnprocessableEntityError) as err:
        lc_completions(tiny_server, **{field: 0.5}).invoke(PROMPT)
    assert err.value.body["param"] == field and "not supported" in err.value.body["message"]
