"""The runner's records: a row to prefill (`NewRow`) and what a forward produced (`StepOutput`).

Their own module so that the runner and its compiled decode step (`server.engine.compiled_step`, whose
start-up probe prefills rows) share them without importing each other.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from server.engine.logprobs import TokenLogprob
from server.engine.sampling import SamplingParams
from vectors.slots import LayerRow


@dataclass(frozen=True)
class NewRow:
    """A row to prefill: its prompt, sampling, seed and steering (what `compose` made of its config)."""

    prompt_ids: Sequence[int]
    sampling: SamplingParams
    seed: int
    steering: Mapping[int, LayerRow] = field(default_factory=dict)


@dataclass(frozen=True)
class StepOutput:
    """What a forward produced for each of its rows, in slot order."""

    tokens: list[int]
    logprobs: list[TokenLogprob | None]
    prompt_logprobs: list[list[TokenLogprob | None] | None] = field(default_factory=list)
