"""Prompt formatting shared by the trainer and the server.

One function turns a prompt (or a chat) into token ids, so that a vector is trained and served on
exactly the same token layout. With a chat template the conversation goes through it (the model's
own format, exactly one BOS, no system prompt that we did not ask for); without one the text is
encoded as-is with the tokenizer's usual special tokens.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

Message = Mapping[str, str]

# Probe text used to find what a chat template renders before the first user message.
_PROBE = "zqprobezq"
_MARKUP = re.compile(r"<[^<>]*>|\[[^\[\]]*\]")
_ROLE_WORDS = {"system", "user", "assistant", "model", "human", "bot"}


def has_chat_template(tokenizer: Any) -> bool:
    """True when the tokenizer carries a chat template."""
    return bool(getattr(tokenizer, "chat_template", None))


def format_prompt(
    tokenizer: Any,
    *,
    prompt: str | None = None,
    messages: Sequence[Message] | None = None,
) -> list[int]:
    """Token ids of a prompt ready for generation or option scoring.

    Give exactly one of `prompt` (a user turn) or `messages` (`[{"role", "content"}, ...]`).
    Chat template present: rendered with the generation prompt, exactly one leading BOS when the
    model uses one, and no default system prompt injected by the template. No template: plain text
    (messages' contents joined by newlines), encoded with the tokenizer's own special tokens.
    """
    if (prompt is None) == (messages is None):
        raise ValueError("format_prompt needs exactly one of prompt= or messages=")
    if messages is not None and not messages:
        raise ValueError("format_prompt needs at least one message")
    if has_chat_template(tokenizer):
        chat = [{"role": "user", "content": prompt}] if prompt is not None else [dict(m) for m in messages]
        return _chat_ids(tokenizer, chat)
    return encode_text(tokenizer, prompt if prompt is not None else "\n".join(m["content"] for m in messages))


def encode_text(tokenizer: Any, text: str) -> list[int]:
    """Raw text as the model continues it: the tokenizer's usual special tokens (exactly one BOS when it adds
    one), no chat template. What a template-less model's prompts are, and what /v1/completions scores."""
    ids = list(tokenizer(text, add_special_tokens=True)["input_ids"])
    return _one_bos(tokenizer, ids, want_bos=_adds_bos(tokenizer))


def _chat_ids(tokenizer: Any, chat: list[dict[str, str]]) -> list[int]:
    """Render a chat through the template and encode it without adding special tokens twice."""
    if chat[0]["role"] != "system" and _template_injects_system(tokenizer):
        chat = [{"role": "system", "content": ""}, *chat]
    text = tokenizer.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
    ids = list(tokenizer(text, add_special_tokens=False)["input_ids"])
    bos = tokenizer.bos_token
    want_bos = _adds_bos(tokenizer) or bool(bos and text.startswith(bos))
    return _one_bos(tokenizer, ids, want_bos=want_bos)


_INJECTS_CACHE: dict[tuple[str, tuple[str, ...]], bool] = {}


def _template_injects_system(tokenizer: Any) -> bool:
    """Whether the template writes text of its own before a lone user message (a default system prompt).

    Cached per (template, special tokens): the answer depends on nothing else.
    """
    key = (str(tokenizer.chat_template), tuple(tokenizer.all_special_tokens))
    if key not in _INJECTS_CACHE:
        _INJECTS_CACHE[key] = _probe_injects_system(tokenizer)
    return _INJECTS_CACHE[key]


def _probe_injects_system(tokenizer: Any) -> bool:
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": _PROBE}], tokenize=False, add_generation_prompt=False
    )
    head = text.split(_PROBE, 1)[0]
    for special in tokenizer.all_special_tokens:
        head = head.replace(special, " ")
    words = re.findall(r"[A-Za-z]{2,}", _MARKUP.sub(" ", head))
    return any(w.lower() not in _ROLE_WORDS for w in words)


def _adds_bos(tokenizer: Any) -> bool:
    """Whether the tokenizer's own encoding starts with BOS (i.e. the model expects one)."""
    bos_id = tokenizer.bos_token_id
    if bos_id is None:
        return False
    ids = tokenizer("a", add_special_tokens=True)["input_ids"]
    return bool(ids) and ids[0] == bos_id


def _one_bos(tokenizer: Any, ids: list[int], *, want_bos: bool) -> list[int]:
    """Strip leading BOS tokens and put back exactly one if the model wants it."""
    bos_id = tokenizer.bos_token_id
    if bos_id is None:
        return ids
    start = 0
    while start < len(ids) and ids[start] == bos_id:
        start += 1
    body = ids[start:]
    return [bos_id, *body] if want_bos or start > 0 else body


__all__ = ["Message", "encode_text", "format_prompt", "has_chat_template"]
