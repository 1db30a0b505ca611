"""OpenAI compatibility through the real `openai` client and raw HTTP: steered model ids, raw-continuation
completions, token-id prompts, echo + log-probs (checked against the model's own forward), scoring-only requests,
the tokenizer routes, neutral values accepted and everything else refused by name."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest
import torch

from server.engine.model import LoadedModel
from tests.server.kit_api import UNSUPPORTED, Api, check_unsupported_is_a_422
from tests.server.kit_server import run_server, settings_for
from tests.server.kit_world import TinyWorld
from vectors.prompts import encode_text, format_prompt

MODEL = "tiny"
PROMPT = "At a wedding we eat"


@pytest.fixture(scope="module")
def server(tiny_world: TinyWorld, tiny_engine: LoadedModel) -> Iterator[Any]:
    with run_server(settings_for(tiny_world, model_name=MODEL), engine=tiny_engine) as running:
        yield running


@pytest.fixture(scope="module")
def oai(server: Any) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0)


@pytest.fixture(scope="module")
def http(server: Any) -> Iterator[httpx.Client]:
    with server.client() as client:
        yield client


def text_of(
    oai: openai.OpenAI, model: str, steer: dict[str, float] | None = None, temperature: float = 0, **kw: Any
) -> str:
    extra = {"steer": steer} if steer else None
    out = oai.completions.create(
        model=model, prompt=PROMPT, max_tokens=8, temperature=temperature, extra_body=extra, **kw
    )
    return out.choices[0].text


def error_of(response: httpx.Response, status: int = 422) -> dict[str, Any]:
    assert response.status_code == status, response.text
    return response.json()["error"]


# --- model ids ------------------------------------------------------------------------------------------------


def test_models_lists_the_base_and_one_steered_id_per_vector(oai: openai.OpenAI, server: Any) -> None:
    cards = {m.id: m for m in oai.models.list().data}
    names = {v.name for v in server.runtime.catalog.vectors()}
    assert set(cards) == {MODEL} | {f"{MODEL}:{n}" for n in names}
    assert all("," not in i and "=" not in i for i in cards)  # lm-eval splits its model_args on them
    card = cards[f"{MODEL}:demo/delta"].model_extra
    assert card["parent"] == MODEL and card["root"] == MODEL and card["max_model_len"] == 256
    assert card["steer"] == {
        "vector": "demo/delta",
        "strength": 1.0,
        "strength_range": [-50.0, 50.0],
        "method": "yapo",
        "space": "sae",
        "layer": 2,
        "apply": "both",
    }
    assert cards[MODEL].model_extra["parent"] is None


def test_a_steered_id_steers_exactly_like_the_steer_field(oai: openai.OpenAI) -> None:
    plain = text_of(oai, MODEL)
    assert text_of(oai, f"{MODEL}:demo/delta@4") == text_of(oai, MODEL, {"demo/delta": 4.0}) != plain
    assert text_of(oai, f"{MODEL}:demo/delta") == text_of(oai, MODEL, {"demo/delta": 1.0})  # default strength
    composed = {"demo/delta": 4.0, "sae:3": -2.0, "demo/gamma": 0.5}
    assert text_of(oai, f"{MODEL}:demo/delta@4+sae:3@-2+demo/gamma@0.5") == text_of(oai, MODEL, composed)
    chat = oai.chat.completions.create(
        model=f"{MODEL}:demo/delta@4",
        messages=[{"role": "user", "content": PROMPT}],
        max_tokens=6,
        temperature=0,
    )
    assert chat.model == f"{MODEL}:demo/delta@4"
    assert chat.model_extra["steer"][0]["name"] == "demo/delta"
    assert chat.model_extra["steer"][0]["strength"] == 4.0


def test_the_model_path_as_given_is_an_alias_of_the_base(oai: openai.OpenAI, server: Any) -> None:
    given = server.runtime.settings.model
    assert text_of(oai, given) == text_of(oai, MODEL)
    assert text_of(oai, f"{given}:demo/delta@4") == text_of(oai, f"{MODEL}:demo/delta@4")


@pytest.mark.parametrize(
    ("model", "says"),
    [
        (f"{MODEL}:demo/nope", "unknown steering vector 'demo/nope'"),
        (f"{MODEL}:demo/delta@x", "'x' of 'demo/delta' is not a number"),
        (f"{MODEL}:demo/delta@inf", "finite"),
        (f"{MODEL}:demo/delta@400", "outside its strength_range [-50.0, 50.0]"),
        (f"{MODEL}:demo/delta+demo/delta@2", "appears twice"),
        (f"{MODEL}:demo/delta+", "empty vector name"),
        (f"{MODEL}:sae:999999", "out of range"),
        (f"{MODEL}:sae:x", "malformed ad-hoc vector"),
    ],
)
def test_a_bad_steered_id_is_a_422_naming_model(http: httpx.Client, model: str, says: str) -> None:
    err = error_of(http.post("/v1/completions", json={"model": model, "prompt": PROMPT, "max_tokens": 2}))
    assert err["param"] == "model" and says in err["message"]


def test_steered_id_with_a_steer_body_or_another_model(http: httpx.Client) -> None:
    body = {"model": f"{MODEL}:demo/delta", "prompt": PROMPT, "steer": {"demo/alpha": 1.0}}
    err = error_of(http.post("/v1/completions", json=body))
    assert err["param"] == "model" and "not both" in err["message"]
    err = error_of(http.post("/v1/completions", json={"model": "other:demo/delta", "prompt": PROMPT}), 404)
    assert err["param"] == "model" and err["type"] == "model_not_found"


# --- raw continuation, token ids, echo and log-probs -------------------------------------------------------------


def forward_logprobs(engine: LoadedModel, ids: list[int]) -> torch.Tensor:
    """log_softmax of the unsteered model over `ids` [T, V] (float32)."""
    with torch.no_grad():
        logits = engine.model(input_ids=torch.tensor([ids])).logits[0]
    return torch.log_softmax(logits.float(), dim=-1)


def test_completions_continue_raw_text_not_the_chat_template(
    oai: openai.OpenAI, tiny_engine: LoadedModel
) -> None:
    tok = tiny_engine.tokenizer
    raw = encode_text(tok, PROMPT)
    assert raw != format_prompt(tok, prompt=PROMPT)  # the tiny model has a chat template
    out = oai.completions.create(model=MODEL, prompt=PROMPT, max_tokens=4, temperature=0)
    assert raw == tok(PROMPT)["input_ids"]  # the tokenizer's own special tokens (this one adds none)
    assert out.usage.prompt_tokens == len(raw)
    by_ids = oai.completions.create(model=MODEL, prompt=raw, max_tokens=4, temperature=0)
    assert by_ids.choices[0].text == out.choices[0].text


def test_ignore_eos_is_accepted_as_vllm_does(oai: openai.OpenAI, http: httpx.Client) -> None:
    """vLLM's `ignore_eos` (sent by its benchmark tools through the openai client's extra_body) reaches the engine:
    the answer runs to max_tokens, greedy text unchanged (tests/server/test_engine.py checks the EOS itself)."""
    plain = oai.completions.create(model=MODEL, prompt=PROMPT, max_tokens=6, temperature=0)
    fixed = oai.completions.create(
        model=MODEL, prompt=PROMPT, max_tokens=6, temperature=0, extra_body={"ignore_eos": True}
    )
    assert fixed.usage.completion_tokens == 6 and fixed.choices[0].finish_reason == "length"
    if plain.choices[0].finish_reason == "length":
        assert fixed.choices[0].text == plain.choices[0].text
    r = http.post("/generate", json={"prompt": PROMPT, "max_new_tokens": 6, "ignore_eos": True})
    assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 6, r.text
    bad = http.post("/v1/completions", json={"model": MODEL, "prompt": PROMPT, "ignore_eos": "sometimes"})
    assert bad.status_code == 422 and "ignore_eos" in bad.text, bad.text


def test_echo_logprobs_are_the_models_own(oai: openai.OpenAI, tiny_engine: LoadedModel) -> None:
    ids = encode_text(tiny_engine.tokenizer, PROMPT)
    out = oai.completions.create(
        model=MODEL, prompt=PROMPT, max_tokens=3, temperature=0, logprobs=3, echo=True
    )
    choice = out.choices[0]
    lp = choice.logprobs
    assert choice.text.startswith(PROMPT)
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == len(ids) + 3
    assert lp.token_logprobs[0] is None and lp.top_logprobs[0] is None
    generated = out.usage.completion_tokens
    full = forward_logprobs(tiny_engine, ids)
    want = [float(full[t, ids[t + 1]]) for t in range(len(ids) - 1)]
    assert lp.token_logprobs[1 : len(ids)] == pytest.approx(want, abs=1e-4)
    for top, chosen in zip(lp.top_logprobs[len(ids) :], lp.token_logprobs[len(ids) :], strict=True):
        assert (
            len(top) == 3 and max(top.values()) == chosen
        )  # greedy: the chosen token is the best, bit for bit
    assert generated == 3
    assert lp.text_offset[0] == 0 and lp.text_offset == sorted(lp.text_offset)
    assert [choice.text[o : o + len(t)] for o, t in zip(lp.text_offset[1:], lp.tokens[1:], strict=True)] == (
        lp.tokens[1:]
    )


def test_max_tokens_0_with_echo_scores_the_prompt_only(oai: openai.OpenAI, tiny_engine: LoadedModel) -> None:
    ids = encode_text(tiny_engine.tokenizer, PROMPT)
    prompts = [ids, ids[:3]]
    out = oai.completions.create(model=MODEL, prompt=prompts, max_tokens=0, logprobs=1, echo=True)
    assert out.usage.completion_tokens == 0
    for choice, prompt in zip(out.choices, prompts, strict=True):
        assert choice.finish_reason == "length"
        assert len(choice.logprobs.token_logprobs) == len(prompt)  # token ids verbatim: no BOS added
        full = forward_logprobs(tiny_engine, prompt)
        want = [float(full[t, prompt[t + 1]]) for t in range(len(prompt) - 1)]
        assert choice.logprobs.token_logprobs[1:] == pytest.approx(want, abs=1e-4)


def test_steered_logprobs_are_the_steered_models(oai: openai.OpenAI, tiny_engine: LoadedModel) -> None:
    ids = encode_text(tiny_engine.tokenizer, PROMPT)

    def scores(model: str, **kw: Any) -> list[float]:
        out = oai.completions.create(model=model, prompt=ids, max_tokens=0, logprobs=1, echo=True, **kw)
        return out.choices[0].logprobs.token_logprobs[1:]

    plain, steered = scores(MODEL), scores(f"{MODEL}:demo/delta@4")
    assert steered == pytest.approx(scores(MODEL, extra_body={"steer": {"demo/delta": 4.0}}), abs=1e-5)
    assert max(abs(a - b) for a, b in zip(plain, steered, strict=True)) > 0.01


def test_chat_logprobs_content(oai: openai.OpenAI) -> None:
    out = oai.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": PROMPT}],
        max_tokens=4,
        temperature=0,
        logprobs=True,
        top_logprobs=2,
    )
    content = out.choices[0].logprobs.content
    assert len(content) == out.usage.completion_tokens == 4
    for entry in content:
        assert len(entry.top_logprobs) == 2 and entry.top_logprobs[0].logprob == entry.logprob
        assert entry.bytes == list(entry.token.encode("utf-8"))
    assert "".join(e.token for e in content).strip() == out.choices[0].message.content.strip()
    plain = oai.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": PROMPT}], max_tokens=2
    )
    assert plain.choices[0].logprobs is None


def test_logprob_limits_and_misuse_are_422s_naming_the_field(
    http: httpx.Client, tiny_engine: LoadedModel
) -> None:
    def post(route: str, **body: Any) -> dict[str, Any]:
        return error_of(http.post(f"/v1/{route}", json={"model": MODEL, **body}))

    msgs = [{"role": "user", "content": "hi"}]
    assert post("completions", prompt=PROMPT, logprobs=21)["param"] == "logprobs"
    assert "20" in post("completions", prompt=PROMPT, logprobs=21)["message"]
    assert post("chat/completions", messages=msgs, logprobs=True, top_logprobs=21)["param"] == "top_logprobs"
    assert (
        post("chat/completions", messages=msgs, top_logprobs=2)["param"] == "top_logprobs"
    )  # needs logprobs
    assert post("completions", prompt=PROMPT, max_tokens=0)["param"] == "max_tokens"  # 0 needs echo
    assert post("completions", prompt=PROMPT, logprobs=1, stream=True)["param"] == "logprobs"
    vocab = len(tiny_engine.tokenizer)
    err = post("completions", prompt=[1, vocab])
    assert err["param"] == "prompt" and f"token id {vocab} is outside the vocabulary" in err["message"]
    for prompt in ([], [[]], [-1], [1, "a"], [True]):
        assert post("completions", prompt=prompt)["param"] == "prompt"


# --- neutral values are accepted, everything else is refused by name ------------------------------------------


def test_neutral_values_mean_their_defaults(oai: openai.OpenAI, http: httpx.Client) -> None:
    want = text_of(oai, MODEL)
    nulls = {
        k: None for k in ("temperature", "top_p", "n", "stop", "seed", "logprobs", "suffix", "user", "steer")
    }
    body = {"model": MODEL, "prompt": PROMPT, "max_tokens": 8, **nulls, "temperature": 0}
    neutral = {
        "frequency_penalty": 0,
        "presence_penalty": 0,
        "logit_bias": {},
        "best_of": 1,
        "echo": False,
        "metadata": {"run": "a"},
        "store": False,
        "stream_options": None,
    }
    out = http.post("/v1/completions", json={**body, **neutral})
    assert out.status_code == 200, out.text
    assert out.json()["choices"][0]["text"] == want
    assert http.post("/v1/completions", json={**body, "logprobs": 0}).json()["choices"][0]["logprobs"] is None
    assert http.post("/v1/completions", json={**body, "logprobs": False}).status_code == 200
    for seed in (2**64 - 1, -(2**63)):
        assert text_of(oai, MODEL, seed=seed) == want  # any 64-bit seed (greedy: same text)
    sampled = [text_of(oai, MODEL, seed=s, temperature=1.0) for s in (2**64 - 1, 2**64 - 1, -1)]
    assert sampled[0] == sampled[1] == sampled[2]  # -1 and 2**64 - 1 are the same seed modulo 2**64


def test_neutral_chat_fields_and_message_shapes(oai: openai.OpenAI) -> None:
    def answer(messages: list[dict[str, Any]], **kw: Any) -> str:
        out = oai.chat.completions.create(model=MODEL, messages=messages, max_tokens=6, temperature=0, **kw)
        return out.choices[0].message.content

    want = answer([{"role": "system", "content": "Be brief."}, {"role": "user", "content": PROMPT}])
    parts = [{"type": "text", "text": "At a wedding "}, {"type": "text", "text": "we eat"}]
    shaped = [
        {"role": "developer", "content": "Be brief."},
        {"role": "user", "content": parts, "name": "ann"},
    ]
    assert answer(shaped) == want
    neutral = {
        "frequency_penalty": 0,
        "presence_penalty": 0,
        "logit_bias": {},
        "response_format": {"type": "text"},
        "parallel_tool_calls": True,
        "tool_choice": "none",
        "user": "u1",
        "metadata": {"k": "v"},
        "store": False,
        "logprobs": False,
        "top_logprobs": 0,
        "seed": 2**64 - 1,
    }
    assert answer(shaped, **neutral) == want
    stream = oai.chat.completions.create(
        model=MODEL,
        messages=shaped,
        max_tokens=6,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True, "include_obfuscation": False},
    )
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == want


@pytest.mark.parametrize(("route", "field", "value"), UNSUPPORTED)
def test_non_neutral_values_of_missing_features_are_422s(
    http: httpx.Client, route: str, field: str, value: Any
) -> None:
    check_unsupported_is_a_422(
        Api(http, model=MODEL, vector="culture/one", prompt=PROMPT), route, field, value
    )


def test_content_parts_other_than_text_are_refused(http: httpx.Client) -> None:
    image = {"type": "image_url", "image_url": {"url": "data:,"}}
    body = {"model": MODEL, "messages": [{"role": "user", "content": [image]}]}
    assert error_of(http.post("/v1/chat/completions", json=body))["param"].startswith("messages.0.content")


# --- tokenizer routes -----------------------------------------------------------------------------------------


def test_tokenize_matches_what_the_routes_encode(http: httpx.Client, tiny_engine: LoadedModel) -> None:
    tok = tiny_engine.tokenizer
    out = http.post("/tokenize", json={"model": MODEL, "prompt": PROMPT}).json()
    assert out["tokens"] == encode_text(tok, PROMPT) and out["count"] == len(out["tokens"])
    assert out["max_model_len"] == 256
    bare = http.post(
        "/tokenize", json={"prompt": PROMPT, "add_special_tokens": False, "return_token_strs": True}
    )
    assert bare.json()["tokens"] == tok(PROMPT, add_special_tokens=False)["input_ids"]
    assert bare.json()["token_strs"] == tok.convert_ids_to_tokens(bare.json()["tokens"])
    msgs = [{"role": "user", "content": PROMPT}]
    chat = http.post("/tokenize", json={"messages": msgs}).json()["tokens"]
    assert chat == format_prompt(tok, messages=msgs)
    text = http.post("/detokenize", json={"tokens": out["tokens"]}).json()["prompt"]
    assert text == tok.decode(out["tokens"])
    info = http.get("/tokenizer_info").json()
    assert (
        info["eos_token"] == "</s>"
        and info["bos_token"] == "<s>"
        and info["chat_template"] == tok.chat_template
    )
    assert error_of(http.post("/detokenize", json={"tokens": [len(tok)]}))["param"] == "tokens"
    assert (
        error_of(http.post("/tokenize", json={"prompt": PROMPT, "model": "other"}), 404)["param"] == "model"
    )
    assert error_of(http.post("/tokenize", json={"prompt": PROMPT, "messages": msgs}))["param"] == "body"


def test_lm_eval_remote_tokenizer_works_through_the_routes(server: Any, tiny_engine: LoadedModel) -> None:
    from lm_eval.utils import RemoteTokenizer, check_remote_tokenizer_support

    base = f"{server.url}/v1/completions"
    assert check_remote_tokenizer_support(base)  # what `tokenizer_backend=auto` asks
    remote = RemoteTokenizer(base)
    tok = tiny_engine.tokenizer
    assert remote.encode(PROMPT) == tok(PROMPT, add_special_tokens=False)["input_ids"]
    assert remote.eos_token_id == tok.eos_token_id and remote.bos_token_id == tok.bos_token_id
    assert remote.decode(remote.encode(PROMPT)) == tok.decode(
        tok(PROMPT, add_special_tokens=False)["input_ids"]
    )
