"""`format_prompt`: chat template with exactly one BOS and no injected system text, plain text otherwise."""

from __future__ import annotations

import copy

import pytest

from vectors.prompts import format_prompt, has_chat_template

# Writes BOS itself, like Gemma's template, while the tokenizer also adds one: the double-BOS trap.
BOS_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}</s>{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
# Injects a default system prompt when none is given, like Qwen2.5's template.
SYSTEM_TEMPLATE = (
    "{% if messages[0]['role'] != 'system' %}<|system|>You are a helpful assistant.</s>{% endif %}"
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}</s>{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


@pytest.fixture()
def plain_tok(world_lm):
    return copy.deepcopy(world_lm[1])


def _with_template(tok, template):
    tok = copy.deepcopy(tok)
    tok.chat_template = template
    return tok


def test_plain_text_without_template(plain_tok) -> None:
    assert not has_chat_template(plain_tok)
    ids = format_prompt(plain_tok, prompt="At a wedding we eat")
    assert ids == plain_tok("At a wedding we eat")["input_ids"]
    assert ids[0] == plain_tok.bos_token_id and ids.count(plain_tok.bos_token_id) == 1


def test_plain_messages_are_joined(plain_tok) -> None:
    ids = format_prompt(plain_tok, messages=[{"role": "user", "content": "I am from Egypt."}])
    assert ids == format_prompt(plain_tok, prompt="I am from Egypt.")


def test_chat_template_gives_exactly_one_bos(plain_tok) -> None:
    tok = _with_template(plain_tok, BOS_TEMPLATE)
    ids = format_prompt(tok, prompt="At a wedding we eat")
    assert ids.count(tok.bos_token_id) == 1 and ids[0] == tok.bos_token_id
    text = tok.decode(ids)
    assert text.endswith("<|assistant|>") and "<|user|>At a wedding we eat" in text


def test_chat_template_without_bos_text_still_starts_with_bos(plain_tok) -> None:
    tok = _with_template(plain_tok, BOS_TEMPLATE.replace("{{ bos_token }}", ""))
    ids = format_prompt(tok, prompt="hello")
    assert ids[0] == tok.bos_token_id and ids.count(tok.bos_token_id) == 1


def test_no_injected_system_prompt(plain_tok) -> None:
    tok = _with_template(plain_tok, SYSTEM_TEMPLATE)
    text = tok.decode(format_prompt(tok, prompt="At a wedding we eat"))
    assert "helpful" not in text and "At a wedding we eat" in text
    # A system message the caller gives is kept.
    given = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    assert "Be brief." in tok.decode(format_prompt(tok, messages=given))


def test_exactly_one_of_prompt_or_messages(plain_tok) -> None:
    with pytest.raises(ValueError):
        format_prompt(plain_tok)
    with pytest.raises(ValueError):
        format_prompt(plain_tok, prompt="a", messages=[{"role": "user", "content": "b"}])
