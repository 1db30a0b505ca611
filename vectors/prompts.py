"""Prompt formatting shared by the trainer and the server.

One function turns a prompt (or a chat) into token ids, so that a vector is trained and served on
exactly the same token layout. With a chat template the conversation goes through it (the model's
own format, exactly one BOS, no system prompt that we did not ask for); without one the text is
encoded as-is with the tokenizer's usual special tokens.

Templates have rules of their own (Gemma's refuses a system turn and demands alternating user/model
turns; Mistral's too). A system turn that the template refuses is folded into the first user turn
(its text, a blank line, then the user's text: what Gemma's model card advises); any other chat the
template rejects raises `ChatTemplateError` with the template's own message, which the server answers
as a 422 naming `messages`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from jinja2.exceptions import TemplateError, TemplateSyntaxError

from vectors.errors import SteerError

Message = Mapping[str, str]


class ChatTemplateError(SteerError, ValueError):
    """The model's chat template refused a chat; `field` is the request field it came from."""

    def __init__(self, message: str, *, field: str = "messages") -> None:
        super().__init__(message)
        self.field = field


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
    model uses one, and no default system prompt injected by the template; a system turn the template
    refuses is folded into the first user turn, any other chat it refuses raises `ChatTemplateError`.
    No template: plain text (messages' contents joined by newlines), encoded with the tokenizer's own
    special tokens.
    """
    if (prompt is None) == (messages is None):
        raise ValueError("format_prompt needs exactly one of prompt= or messages=")
    if messages is not None and not messages:
        raise ValueError("format_prompt needs at least one message")
    if has_chat_template(tokenizer):
        chat = (
            [{"role": "user", "content": prompt}] if prompt is not None else [dict(m) for m in messages or ()]
        )
        return _chat_ids(tokenizer, chat, "prompt" if prompt is not None else "messages")
    return encode_text(
        tokenizer, prompt if prompt is not None else "\n".join(m["content"] for m in messages or ())
    )


def encode_text(tokenizer: Any, text: str) -> list[int]:
    """Raw text as the model continues it: the tokenizer's usual special tokens (exactly one BOS when it adds
    one), no chat template. What a template-less model's prompts are, and what /v1/completions scores."""
    ids = list(tokenizer(text, add_special_tokens=True)["input_ids"])
    return _one_bos(tokenizer, ids, want_bos=_adds_bos(tokenizer))


def _chat_ids(tokenizer: Any, chat: list[dict[str, str]], field: str) -> list[int]:
    """Render a chat through the template and encode it without adding special tokens twice."""
    text = _render(tokenizer, chat, field)
    ids = list(tokenizer(text, add_special_tokens=False)["input_ids"])
    bos = tokenizer.bos_token
    want_bos = _adds_bos(tokenizer) or bool(bos and text.startswith(bos))
    return _one_bos(tokenizer, ids, want_bos=want_bos)


def _render(tokenizer: Any, chat: list[dict[str, str]], field: str) -> str:
    """The template's text for `chat` with the generation prompt; never a turn the template rejects.

    An empty system turn stands in for a default system prompt the template would inject, unless the
    template refuses it; a system turn the template refuses is folded into the first user turn.
    """
    if chat[0]["role"] != "system" and _template_injects_system(tokenizer):
        with_empty = _try_render(tokenizer, [{"role": "system", "content": ""}, *chat])
        if with_empty is not None:
            return with_empty
    try:
        return _apply(tokenizer, chat)
    except TemplateSyntaxError:
        raise  # a broken template is the deployment's fault, not the request's
    except TemplateError as exc:
        refusal = exc
    if chat[0]["role"] == "system":
        try:
            return _apply(tokenizer, _fold_system(chat))
        except TemplateError as exc:
            refusal = exc  # what is still wrong once the system turn is folded in
    reason = refusal.message or type(refusal).__name__
    raise ChatTemplateError(f"the model's chat template rejects this chat: {reason}", field=field)


def _apply(tokenizer: Any, chat: list[dict[str, str]]) -> str:
    return str(tokenizer.apply_chat_template(chat, tokenize=False, add_generation_prompt=True))


def _try_render(tokenizer: Any, chat: list[dict[str, str]]) -> str | None:
    try:
        return _apply(tokenizer, chat)
    except TemplateError:
        return None


def _fold_system(chat: list[dict[str, str]]) -> list[dict[str, str]]:
    """A leading system turn merged into the user turn after it (or made the first user turn)."""
    system, rest = chat[0]["content"], chat[1:]
    if rest and rest[0]["role"] == "user":
        merged = f"{system}\n\n{rest[0]['content']}" if system else rest[0]["content"]
        return [{"role": "user", "content": merged}, *rest[1:]]
    return [{"role": "user", "content": system}, *rest]


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
    try:
        text = tokenizer.apply_chat_template(
            [{"role": "user", "content": _PROBE}], tokenize=False, add_generation_prompt=False
        )
    except TemplateError:
        return False  # a template that refuses a lone user turn injects nothing we could replace
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


__all__ = ["ChatTemplateError", "Message", "encode_text", "format_prompt", "has_chat_template"]
