"""The ``steer`` JSON object stored in a vector file's safetensors header.

This schema is the product's file-format contract: other tools read it, so it is strict (unknown keys are
rejected, so typos surface) and self-describing (model, layer, hook site, SAE, recommended strength). The one
exception is the `training` provenance (`TrainingRecord`): it keeps keys it does not know, so that vectors from
other trainer versions keep their record when read and written back.
"""

from __future__ import annotations

import math
import re
from datetime import datetime, timezone
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_serializer, field_validator, model_validator

from vectors.names import validate_name
from vectors.training_record import TrainingRecord

Method = Literal["yapo", "bipo", "caa", "sas", "manual"]
Space = Literal["sae", "dense"]
ApplyPhase = Literal["prompt", "generation", "both"]

FORMAT_VERSION = 1

_LAYER_RE = (re.compile(r"blocks\.(\d+)\.hook_resid_post"), re.compile(r"model\.layers\.(\d+)"))


def layer_from_hook_name(hook_name: str) -> int:
    """Decoder layer whose output a hook name refers to.

    Both sae-lens conventions are accepted: ``blocks.{L}.hook_resid_post`` (TransformerLens / Gemma Scope) and
    ``model.layers.{L}`` (what sae-lens writes when it trains on a Hugging Face model). Anything else raises
    `ValueError`, because steering is only defined on the residual stream after a decoder block.
    """
    for pattern in _LAYER_RE:
        m = pattern.fullmatch(hook_name)
        if m:
            return int(m.group(1))
    raise ValueError(
        f"unsupported hook name {hook_name!r}: expected 'blocks.<L>.hook_resid_post' or 'model.layers.<L>'"
    )


def dense_hook_name(layer: int) -> str:
    """The hook name a dense vector at `layer` records."""
    return f"blocks.{layer}.hook_resid_post"


def utc_now() -> str:
    """Current time as an ISO-8601 UTC string (the `created` field)."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ModelRef(_Strict):
    """The base model a vector was trained for."""

    name: str
    hidden_size: int = Field(gt=0)
    num_layers: int = Field(gt=0)


class SaeRef(_Strict):
    """The SAE whose code space an SAE-space vector lives in."""

    source: str = Field(min_length=1, description="local path or 'release/id'")
    d_sae: int = Field(gt=0)
    architecture: str = Field(min_length=1)


class VectorMetadata(_Strict):
    """Everything a vector file says about itself (the ``steer`` key of ``__metadata__``)."""

    format_version: int = FORMAT_VERSION
    name: str
    method: Method
    space: Space
    layer: int = Field(ge=0, description="output of decoder block `layer`")
    hook_name: str
    model: ModelRef
    sae: SaeRef | None = None
    default_strength: float = 1.0
    strength_range: tuple[float, float] = (-2.0, 2.0)
    apply: ApplyPhase = "both"
    created: str = Field(default_factory=utc_now)
    training: TrainingRecord = Field(default_factory=TrainingRecord)
    eval: dict[str, Any] = Field(default_factory=dict)

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        return validate_name(v)

    @field_validator("format_version")
    @classmethod
    def _version(cls, v: int) -> int:
        if v != FORMAT_VERSION:
            raise ValueError(f"unsupported format_version {v} (this reader knows {FORMAT_VERSION})")
        return v

    @field_serializer("training")
    def _training(self, record: TrainingRecord) -> dict[str, Any]:
        return record.to_dict()

    @model_validator(mode="after")
    def _consistent(self) -> VectorMetadata:
        if self.layer >= self.model.num_layers:
            raise ValueError(f"layer {self.layer} out of range for a {self.model.num_layers}-layer model")
        lo, hi = self.strength_range
        if not (math.isfinite(lo) and math.isfinite(hi) and lo <= hi):
            raise ValueError(f"strength_range must be finite [lo, hi] with lo <= hi, got {[lo, hi]}")
        if not math.isfinite(self.default_strength):
            raise ValueError("default_strength must be finite")
        if self.space == "sae":
            if self.sae is None:
                raise ValueError("space 'sae' requires the 'sae' object {source, d_sae, architecture}")
            if layer_from_hook_name(self.hook_name) != self.layer:
                raise ValueError(f"hook_name {self.hook_name!r} does not refer to layer {self.layer}")
        else:
            if self.sae is not None:
                raise ValueError("space 'dense' must not carry an 'sae' object")
            if self.hook_name != dense_hook_name(self.layer):
                raise ValueError(
                    f"dense hook_name must be {dense_hook_name(self.layer)!r}, got {self.hook_name!r}"
                )
        return self

    def to_json(self) -> str:
        """Compact JSON for the safetensors header."""
        return self.model_dump_json()
