"""`TrainingRecord`: how a vector was made, the `training` object of its metadata (`steer train` writes it).

Typed fields for what the trainer records: method, target, data file and content hash, layer, hyper-parameters,
steps and losses (YaPO / BiPO), the retention penalty's settings (`--retain`) and the vector's effect at strength 1.
Every field is optional, because vectors made by hand or by an older trainer carry fewer of them. Keys this reader
does not know are kept (`extra`), and `to_dict` writes back exactly the keys that were read or set: an absent key
stays absent and a null stays null, so a file from an older or newer trainer keeps its `training` object unchanged.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypeVar

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, model_validator

_R = TypeVar("_R", bound="_Record")


class _Record(BaseModel):
    """A frozen record that keeps unknown keys and writes back only the keys it was given."""

    model_config = ConfigDict(frozen=True, extra="allow")

    @property
    def extra(self) -> dict[str, Any]:
        """The keys this reader does not know, as they were read."""
        return dict(self.model_extra or {})

    def to_dict(self) -> dict[str, Any]:
        """The JSON object: the keys that were read or set (unknown ones included), nested records alike."""
        return self.model_dump(mode="json", by_alias=True, exclude_unset=True)

    @classmethod
    def from_dict(cls: type[_R], raw: Mapping[str, Any]) -> _R:
        """The record of `to_dict` (or of any trainer's); a `ValueError` names the field that is malformed."""
        return cls.model_validate(raw)


class Hyperparameters(_Record):
    """The run's settings that shape the vector, named as `TrainConfig` names them (the trainer copies them by
    name); the optimisation ones apply to YaPO / BiPO."""

    beta: float | None = None
    lr: float | None = None
    epochs: int | None = None
    max_steps: int | None = None
    batch_size: int | None = None
    weight_decay: float | None = None
    grad_clip: float | None = None
    seed: int | None = None
    max_length: int | None = None
    top_k: int | None = None
    l1: float | None = None
    tau: float | None = None
    dtype: str | None = None


class LossCurve(_Record):
    """The logged mean losses at their steps (thinned to at most 200 points): the playground plots it."""

    step: tuple[int, ...] = ()
    loss: tuple[float, ...] = ()

    @model_validator(mode="after")
    def _paired(self) -> LossCurve:
        if len(self.step) != len(self.loss):
            raise ValueError(f"loss_curve: {len(self.step)} steps but {len(self.loss)} losses")
        return self


class RetentionRecord(_Record):
    """The retention penalty of a run trained with `--retain`: its facts and settings, and its last value."""

    data: str | None = None  # file name of the facts
    data_hash: str | None = None
    pairs: int | None = None
    weight: float | None = None
    batch_size: int | None = None
    margin: float | None = None  # nats each answer must keep (None: π₀'s whole lead)
    strengths: tuple[float, ...] = ()  # strengths the penalty applies at, 1 first
    final_penalty: float | None = None


class Effect(_Record):
    """What the vector does at strength 1 on `pairs` of its training pairs (measured when it is made)."""

    pairs: int
    shift_norm: float  # |Δh| the vector adds at its layer (decoded through the SAE for SAE-space vectors)
    residual_norm: float  # mean |h| at that layer, last token of the training rows (unsteered)
    margin_gain: float  # mean steered − unsteered preference margin log π(chosen) − log π(rejected), nats
    ranked_unsteered: float  # share of pairs with chosen ahead of rejected
    ranked_steered: float
    weak: bool  # the margin gain is under the trainer's threshold: too weak to matter


class TrainingRecord(_Record):
    """A vector's training provenance; every field is absent (None / empty) when its producer did not record it."""

    method: str | None = None
    target: str | None = None  # what the vector steers toward (e.g. a country); eval's default target
    data: str | None = None  # file name of the preference pairs
    data_hash: str | None = None  # content hash of the pairs, in order
    where: dict[str, str] = Field(default_factory=dict)  # row filters the data was read with
    pairs: int | None = None
    encode: dict[str, int] = Field(default_factory=dict)  # pairs kept / skipped / truncated when tokenized
    layer: int | None = None
    hyperparameters: Hyperparameters | None = None
    reference_mode: bool | None = None
    steps: int | None = None
    warmup_steps: int | None = None
    final_loss: float | None = None  # mean of the last logged losses
    steps_to_loss: int | None = Field(  # first step whose trailing mean loss is under 0.1 (None: never)
        default=None,
        validation_alias=AliasChoices("steps_to_loss_0.1", "steps_to_loss"),
        serialization_alias="steps_to_loss_0.1",
    )
    seconds: float | None = None
    loss_curve: LossCurve | None = None
    position: str | None = None  # CAA / SAS: where the activations were read
    retain: RetentionRecord | None = None
    effect: Effect | None = None


__all__ = ["Effect", "Hyperparameters", "LossCurve", "RetentionRecord", "TrainingRecord"]
