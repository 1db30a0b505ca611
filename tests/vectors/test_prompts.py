"""`format_prompt`: chat template with exactly one BOS and no injected system text, plain text otherwise."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest

from vectors.prompts import ChatTemplateError, format_prompt, has_chat_template

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

# Gemma-2-it's real template: no system role, strictly alternating user/model turns.
GEMMA2_TEMPLATE = (Path(__file__).parents[1] / "hub" / "templates" / "gemma-2-it.jinja").read_text()
# Writes a default system prompt of its own and refuses one from the caller.
STUBBORN_TEMPLATE = (
    "{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}{% endif %}"
    "<|system|>You are a helpful assistant.</s>"
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


def test_system_turn_folds_into_the_first_user_turn_when_the_template_refuses_it(plain_tok) -> None:
    tok = _with_template(plain_tok, GEMMA2_TEMPLATE)
    chat = [
        {"role": "system", "content": "Answer in one word."},
        {"role": "user", "content": "What do we eat?"},
        {"role": "assistant", "content": "Couscous."},
        {"role": "user", "content": "And to drink?"},
    ]
    folded = [{"role": "user", "content": "Answer in one word.\n\nWhat do we eat?"}, *chat[2:]]
    ids = format_prompt(tok, messages=chat)
    assert ids == format_prompt(tok, messages=folded)
    assert ids.count(tok.bos_token_id) == 1 and "Answer in one word." in tok.decode(ids)
    # A lone system turn becomes the user turn.
    lone = format_prompt(tok, messages=[{"role": "system", "content": "Be brief."}])
    assert lone == format_prompt(tok, prompt="Be brief.")


@pytest.mark.parametrize(
    "chat",
    [
        [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}],
        [
            {"role": "system", "content": "s"},
            {"role": "user", "content": "a"},
            {"role": "user", "content": "b"},
        ],
        [{"role": "assistant", "content": "a"}],
    ],
)
def test_a_chat_the_template_rejects_raises_its_own_message(plain_tok, chat) -> None:
    tok = _with_template(plain_tok, GEMMA2_TEMPLATE)
    with pytest.raises(ChatTemplateError, match="Conversation roles must alternate") as err:
        format_prompt(tok, messages=chat)
    assert err.value.field == "messages" and isinstance(err.value, ValueError)


def test_no_empty_system_turn_is_injected_into_a_template_that_refuses_it(plain_tok) -> None:
    tok = _with_template(plain_tok, STUBBORN_TEMPLATE)
    text = tok.decode(format_prompt(tok, prompt="hello"))
    assert "<|user|>hello" in text  # its own default system prompt stays: there is no way to replace it
