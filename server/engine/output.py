"""The output stage: tokens in, text and events out (schedule → run → **postprocess**).

For every token the runner produced it appends the id, decodes the text, applies stop strings (holding back
text that could still become one, or an incomplete UTF-8 character, so a stream never shows what the final
answer drops), ends rows, counts metrics and hands events to the request's event loop. It is also the one place
of the rule "a failed row fails its whole request": the request records the error and its other rows stop.
"""

from __future__ import annotations

import time
from typing import Any

import torch

from server.engine.logprobs import TokenLogprob
from server.engine.request import Event, FinishReason, Row
from server.metrics import Metrics


class OutputStage:
    """Detokenize, stop, finish, emit, count. Runs on the engine thread, after each forward."""

    def __init__(self, tokenizer: Any, eos_ids: frozenset[int], metrics: Metrics | None = None) -> None:
        self.tokenizer = tokenizer
        self.eos_ids = eos_ids
        self.metrics = metrics

    def token(self, seq: Row, token: int, logprob: TokenLogprob | None) -> None:
        """Record a generated token, update text and finish state, emit the new text."""
        seq.output_ids.append(token)
        if logprob is not None:
            seq.output_logprobs.append(logprob)
        live = (
            seq.owner is None or seq.owner.streaming or bool(seq.sampling.stop)
        )  # text needed at every token
        if token in self.eos_ids and not seq.sampling.ignore_eos:
            seq.finish_reason = "stop"
        elif live:
            self._decode(seq, seq.output_ids)
        if not seq.finished and len(seq.output_ids) >= seq.sampling.max_new_tokens:
            seq.finish_reason = "length"
        if seq.finished and not live:
            self._decode(seq, seq.output_ids[:-1] if seq.output_ids[-1] in self.eos_ids else seq.output_ids)
        self._count_token(seq)
        if live or seq.finished:
            self._emit(seq)

    def _decode(self, seq: Row, ids: list[int]) -> None:
        """The row's text so far, cut at the first stop string (which then ends the row)."""
        full = self.tokenizer.decode(ids, skip_special_tokens=True)
        cut = _first_stop(full, seq.sampling.stop)
        seq.text = full if cut is None else full[:cut]
        if cut is not None:
            seq.finish_reason = "stop"

    def finish(self, seq: Row, reason: FinishReason, error: BaseException | None = None) -> None:
        """End a row from outside the token path: scored only ("length"), cancelled, or failed."""
        if seq.finished:
            return
        seq.finish_reason, seq.error = reason, error
        handle = seq.owner
        if reason == "error" and handle is not None and handle.error is None:
            handle.error = error or RuntimeError("generation failed")
            handle.cancel()  # the other rows' answers are void
        self._emit(seq)

    def _emit(self, seq: Row) -> None:
        if seq.finished:
            self._count_end(seq)
        safe = seq.text if seq.finished else _holdback(seq.text, seq.sampling.stop)
        delta = ""
        if safe.startswith(seq.emitted):
            delta = safe[len(seq.emitted) :]
            seq.emitted = safe
        if seq.owner is not None:
            seq.owner.emit(Event(seq.index, delta, seq.finished))

    # --- metrics ------------------------------------------------------------------------------------------
    def _count_token(self, seq: Row) -> None:
        m, handle = self.metrics, seq.owner
        if m is None:
            return
        m.generation_tokens.inc()
        if handle is not None and handle.first_token is None:  # the request's first token, whichever row
            handle.first_token = time.monotonic()
            m.ttft.observe(handle.first_token - handle.submitted)

    def _count_end(self, seq: Row) -> None:
        m, handle = self.metrics, seq.owner
        if m is None:
            return
        if seq.finish_reason == "error":
            reason = "oom" if isinstance(seq.error, torch.OutOfMemoryError) else "error"
            m.failures.labels(reason=reason).inc()
        elif seq.finish_reason == "cancelled":
            m.failures.labels(reason="cancelled").inc()
        if handle is None:
            return
        now = time.monotonic()
        n = len(seq.output_ids)
        if seq is handle.seqs[0] and handle.first_token is not None and n > 1:
            m.tpot.observe((now - handle.first_token) / (n - 1))
        if handle.done:  # a request ends with its last row (compare, n choices)
            m.e2e.observe(now - handle.submitted)


def _first_stop(text: str, stops: tuple[str, ...]) -> int | None:
    hits = [i for i in (text.find(s) for s in stops if s) if i >= 0]
    return min(hits) if hits else None


def _holdback(text: str, stops: tuple[str, ...]) -> str:
    """`text` minus a trailing partial character or a suffix that may grow into a stop string."""
    end = len(text)
    while end > 0 and text[end - 1] == "\ufffd":
        end -= 1
    text = text[:end]
    for stop in stops:
        for n in range(min(len(stop) - 1, len(text)), 0, -1):
            if text.endswith(stop[:n]):
                end = min(end, len(text) - n)
                break
    return text[:end]
