"""The protocol of the catalog endpoints `GET /vectors` and `GET /vectors/{name}`."""

from __future__ import annotations

from typing import Any

from pydantic import (
    Field,
)

from server.protocol.common import ResponseModel


class SweepPoint(ResponseModel):
    """One strength of a vector's evaluation sweep (`vectors.eval_record.EvalRecord`)."""

    strength: float
    accuracy: float | None = Field(description="Target-country accuracy on held-out topics at this strength.")
    retention: float | None = Field(description="Accuracy on neutral facts at this strength.")


class VectorSummary(ResponseModel):
    name: str
    method: str
    space: str
    layer: int
    default_strength: float
    strength_range: tuple[float, float]
    apply: str
    eval: dict[str, Any] = Field(default_factory=dict, description="Headline evaluation numbers.")
    sweep: list[SweepPoint] = Field(
        default_factory=list,
        description="The evaluation's strength sweep, by strength (empty: not evaluated).",
    )
    created: str | None = None
    nnz: int


class SkippedFile(ResponseModel):
    path: str
    reason: str


class CatalogResponse(ResponseModel):
    vectors: list[VectorSummary]
    skipped: list[SkippedFile]
    adhoc: str = Field(description="How to steer on one SAE feature without a catalog entry.")


class FeatureValue(ResponseModel):
    index: int
    value: float


class VectorDetail(ResponseModel):
    name: str
    summary: VectorSummary
    metadata: dict[str, Any]
    top_features: list[FeatureValue] = Field(description="Largest |value| SAE features (SAE-space vectors).")
