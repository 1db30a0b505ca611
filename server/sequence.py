"""One generation row: what it asks for (prompt ids, sampling, steering) and what it has produced so far.

Pure row state, no tensors and no callbacks: the scheduler gives it a slot, the runner computes its tokens,
the output stage (`server.output`) appends them, decodes the text and ends the row.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from server.logprobs import TokenLogprob
from server.sampling import SamplingParams

if TYPE_CHECKING:
    from server.output import Handle

FinishReason = Literal["stop", "length", "cancelled", "error"]


@dataclass(frozen=True)
class SteerSpec:
    """The steering of one row: (vector, strength) pairs. Vectors are resolved once, at admission."""

    pairs: tuple[tuple[Any, float], ...] = ()  # (SteeringVector, strength)
    apply: str | None = None  # per-request override of every vector's own apply phase

    @property
    def key(self) -> tuple[Any, ...]:
        """Identity of the config: rows with equal keys share the same steering contents."""
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
    """A row of the batch. `cancel()` may be called from any thread; everything else from the engine thread."""

    def __init__(
        self,
        prompt_ids: list[int],
        sampling: SamplingParams,
        steer: SteerSpec = UNSTEERED,
        *,
        fault: str | None = None,
    ) -> None:
        if not prompt_ids:
            raise ValueError("a sequence needs at least one prompt token")
        self.prompt_ids = list(prompt_ids)
        self.sampling = sampling
        self.steer = steer
        self.seed = sampling.draw_seed()
        # test-only fault injection: "oom" or "error" (at prefill), "step" (at every decode step)
        self.fault = fault
        self.rescued = False  # retried alone once after a failed decode step
        self.slot: int | None = None
        self.owner: Handle | None = None  # the request this row belongs to (set by the scheduler)
        self.index = 0  # its row number in that request
        self.output_ids: list[int] = []
        self.output_logprobs: list[TokenLogprob] = []  # one per generated token when sampling.logprobs is set
        self.prompt_logprobs: list[
            TokenLogprob | None
        ] = []  # the prompt's, when sampling.prompt_logprobs is set
        self.text = ""
        self.emitted = ""
        self.finish_reason: FinishReason | None = None
        self.error: BaseException | None = None
        self._cancel = threading.Event()

    def cancel(self) -> None:
        """Ask the engine to stop this row at the next step."""
        self._cancel.set()

    @property
    def cancelled(self) -> bool:
        return self._cancel.is_set()

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None
