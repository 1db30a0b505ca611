"""One generation row: prompt ids, steering, sampling, and the text it has produced so far.

The engine appends tokens; the sequence decodes them, applies stop strings and holds back text that could still
become a stop string (or is an incomplete UTF-8 character), so a stream never shows text the final answer drops.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from server.logprobs import TokenLogprob
from server.sampling import SamplingParams

FinishReason = Literal["stop", "length", "cancelled", "error"]


@dataclass(frozen=True)
class SteerSpec:
    """The steering of one row: (vector, strength) pairs. Vectors are resolved once, at admission."""

    pairs: tuple[tuple[Any, float], ...] = ()  # (SteeringVector, strength)
    apply: str | None = None  # per-request override of every vector's own apply phase

    @property
    def key(self) -> tuple[Any, ...]:
        """Identity of the config: rows with equal keys can share a steering table row."""
        pairs = tuple(
            sorted((v.layer, v.fingerprint, self.apply or v.meta.apply, float(s)) for v, s in self.pairs)
        )
        return (pairs,)

    @property
    def steered(self) -> bool:
        return bool(self.pairs)

    def as_config(self) -> Mapping[Any, float]:
        return dict(self.pairs)


UNSTEERED = SteerSpec()


class Sequence:
    """A row of the batch. Thread-safe where it matters: `cancel()` may be called from any thread."""

    def __init__(
        self,
        prompt_ids: list[int],
        sampling: SamplingParams,
        steer: SteerSpec = UNSTEERED,
        *,
        on_update: Callable[[Sequence, str], None] | None = None,
        fault: str | None = None,
    ) -> None:
        if not prompt_ids:
            raise ValueError("a sequence needs at least one prompt token")
        self.prompt_ids = list(prompt_ids)
        self.sampling = sampling
        self.steer = steer
        self.on_update = on_update
        # test-only fault injection: "oom" or "error" (at prefill), "step" (at every decode step)
        self.fault = fault
        self.rescued = False  # rebuilt once after a failed decode step (the scheduler's `_rescue`)
        self.output_ids: list[int] = []
        self.output_logprobs: list[TokenLogprob] = []  # one per generated token when sampling.logprobs is set
        self.prompt_logprobs: list[
            TokenLogprob | None
        ] = []  # the prompt's, when sampling.prompt_logprobs is set
        self.text = ""
        self.emitted = ""
        self.finish_reason: FinishReason | None = None
        self.error: BaseException | None = None
        self.generator = sampling.generator()
        self._cancel = threading.Event()

    # --- control ------------------------------------------------------------------------------------------
    def cancel(self) -> None:
        """Ask the engine to stop this row at the next step."""
        self._cancel.set()

    @property
    def cancelled(self) -> bool:
        return self._cancel.is_set()

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None

    # --- engine side ----------------------------------------------------------------------------------------
    def push(self, token: int, tokenizer: Any, eos_ids: frozenset[int]) -> None:
        """Record a generated token, update text and finish state, and notify the listener."""
        self.output_ids.append(token)
        if token in eos_ids:
            self.finish_reason = "stop"
        else:
            self._decode(tokenizer)
        if not self.finished and len(self.output_ids) >= self.sampling.max_new_tokens:
            self.finish_reason = "length"
        self._notify()

    def finish(self, reason: FinishReason, error: BaseException | None = None) -> None:
        """End the row from outside the token path (cancelled, error)."""
        if self.finished:
            return
        self.finish_reason = reason
        self.error = error
        self._notify()

    def _decode(self, tokenizer: Any) -> None:
        full = tokenizer.decode(self.output_ids, skip_special_tokens=True)
        cut = _first_stop(full, self.sampling.stop)
        if cut is not None:
            self.text = full[:cut]
            self.finish_reason = "stop"
        else:
            self.text = full

    def _notify(self) -> None:
        safe = self.text if self.finished else _holdback(self.text, self.sampling.stop)
        delta = ""
        if safe.startswith(self.emitted):
            delta = safe[len(self.emitted) :]
            self.emitted = safe
        if self.on_update is not None:
            self.on_update(self, delta)


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
