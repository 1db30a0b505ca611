"""Log-probs as the OpenAI formats show them: the legacy completions object and chat's `logprobs.content`.

Token strings are each token's text as it reads in place (special tokens as themselves); `text_offset` counts
special tokens as empty, so offsets index the text as it is returned. A log-prob below `FLOOR` (an impossible token) is shown as
`FLOOR`: JSON has no -Infinity.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from server.engine.logprobs import TokenLogprob
from server.engine.request import Row
from server.protocol.chat import ChatLogprobs, ChatTokenLogprob, TopLogprob
from server.protocol.completions import CompletionLogprobs

FLOOR = -9999.0
WINDOW = 6  # previous tokens a token is decoded after


def _shown(value: float) -> float:
    return max(value, FLOOR)


def _pieces(tokenizer: Any, ids: Sequence[int], candidates: Sequence[Sequence[int]]) -> list[list[str]]:
    """The text of each candidate token at each position of `ids`, as it reads after the tokens before it.

    Decoding a token alone loses what depends on its neighbours (a sentencepiece word's leading space, a
    character split over byte tokens), so each is decoded after up to `WINDOW` previous tokens and the text
    those give is cut off. Special tokens show as themselves.
    """
    special = set(getattr(tokenizer, "all_special_ids", []))
    before, after, where = [], [], []
    for pos, options in enumerate(candidates):
        context = list(ids[max(0, pos - WINDOW) : pos])
        for token in options:
            before.append(context)
            after.append([*context, token])
            where.append(token)
    heads = tokenizer.batch_decode(before, skip_special_tokens=True)
    fulls = tokenizer.batch_decode(after, skip_special_tokens=True)
    alone = tokenizer.batch_decode([[t] for t in where], skip_special_tokens=False)
    texts = [
        lone if token in special else full[len(head) :] if full.startswith(head) else lone
        for token, head, full, lone in zip(where, heads, fulls, alone, strict=True)
    ]
    out, at = [], 0
    for options in candidates:
        out.append(texts[at : at + len(options)])
        at += len(options)
    return out


def completion_logprobs(tokenizer: Any, seq: Row, echo: bool) -> CompletionLogprobs:
    """The prompt's tokens (with `echo`; the first has no log-prob) then every generated token."""
    entries: list[TokenLogprob | None] = list(seq.prompt_logprobs) if echo else []
    ids = list(seq.prompt_ids) + list(seq.output_ids)
    first = 0 if echo else len(seq.prompt_ids)
    entries += list(seq.output_logprobs)
    if len(entries) != len(ids) - first:
        raise RuntimeError(f"{len(ids) - first} tokens but {len(entries)} log-probs")  # an engine bug
    shown = [
        [ids[first + i], *(t for t, _ in e.top)] if e else [ids[first + i]] for i, e in enumerate(entries)
    ]
    texts = _pieces(tokenizer, ids, [*([[]] * first), *shown])[first:]
    special = set(getattr(tokenizer, "all_special_ids", []))
    offsets, at = [], 0
    for token, names in zip(ids[first:], texts, strict=True):
        offsets.append(at)
        at += 0 if token in special else len(names[0])
    return CompletionLogprobs(
        tokens=[names[0] for names in texts],
        token_logprobs=[None if e is None else _shown(e.logprob) for e in entries],
        top_logprobs=[
            None if e is None else {name: _shown(v) for name, (_, v) in zip(names[1:], e.top, strict=True)}
            for e, names in zip(entries, texts, strict=True)
        ],
        text_offset=offsets,
    )


def chat_logprobs(tokenizer: Any, seq: Row) -> ChatLogprobs:
    """One entry per generated token, each with its `top_logprobs` alternatives."""
    entries = list(seq.output_logprobs)
    ids = list(seq.prompt_ids) + list(seq.output_ids)
    first = len(seq.prompt_ids)
    shown = [[e.token, *(t for t, _ in e.top)] for e in entries]
    texts = _pieces(tokenizer, ids, [*([[]] * first), *shown])[first:]

    def top(name: str, value: float) -> TopLogprob:
        return TopLogprob(token=name, logprob=_shown(value), bytes=list(name.encode("utf-8")))

    return ChatLogprobs(
        content=[
            ChatTokenLogprob(
                token=names[0],
                logprob=_shown(e.logprob),
                bytes=list(names[0].encode("utf-8")),
                top_logprobs=[top(name, v) for name, (_, v) in zip(names[1:], e.top, strict=True)],
            )
            for e, names in zip(entries, texts, strict=True)
        ]
    )
