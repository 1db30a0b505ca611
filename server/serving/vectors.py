"""Serving of `GET /vectors` (the catalog, with skipped files and why) and `GET /vectors/{name}` (full metadata and
the largest SAE features)."""

from __future__ import annotations

from typing import Any

from server.errors import ApiError
from server.protocol.vectors import (
    CatalogResponse,
    FeatureValue,
    SkippedFile,
    SweepPoint,
    VectorDetail,
    VectorSummary,
)
from server.serving.steering import ADHOC_HELP
from vectors.eval_record import EvalRecord
from vectors.vector import SteeringVector

TOP_FEATURES = 20


class VectorsServing:
    """The live catalog as the listing and detail responses."""

    def __init__(self, catalog: Any) -> None:
        self.catalog = catalog

    def list(self) -> CatalogResponse:
        vectors = sorted(self.catalog.vectors(), key=lambda v: v.name)
        skipped = [SkippedFile(path=p, reason=r) for p, r in sorted(dict(self.catalog.skipped).items())]
        return CatalogResponse(vectors=[summarize(v) for v in vectors], skipped=skipped, adhoc=ADHOC_HELP)

    def get(self, name: str) -> VectorDetail:
        try:
            vector = self.catalog.get(name)
        except (KeyError, ValueError):  # UnknownVector, InvalidVectorName
            raise ApiError(
                404, f"no vector named {name!r} in the catalog", type="not_found", param="name"
            ) from None
        return VectorDetail(
            name=vector.name,
            summary=summarize(vector),
            metadata=vector.meta.model_dump(mode="json"),
            top_features=top_features(vector),
        )


def summarize(vector: SteeringVector) -> VectorSummary:
    meta = vector.meta
    return VectorSummary(
        name=vector.name,
        method=meta.method,
        space=meta.space,
        layer=meta.layer,
        default_strength=meta.default_strength,
        strength_range=meta.strength_range,
        apply=meta.apply,
        eval=headline(meta.eval, meta.default_strength),
        sweep=sweep(meta.eval),
        created=meta.created,
        nnz=vector.nnz,
    )


def headline(evaluation: dict[str, Any], strength: float | None = None) -> dict[str, Any]:
    """The catalog's one-line view of a vector's eval record (`vectors.eval_record.EvalRecord`) at `strength`
    (the vector's default), e.g. ``retention@1``; the full record stays in GET /vectors/{name}. An empty record
    gives {}, one this server cannot read says why under ``unreadable``."""
    if not evaluation:
        return {}
    try:
        record = EvalRecord.from_dict(evaluation)
    except ValueError as exc:
        return {"unreadable": str(exc)}
    return record.headline(strength)


def sweep(evaluation: dict[str, Any]) -> list[SweepPoint]:
    """The eval record's accuracy and retention at each strength it measured, for the playground's cards;
    [] when the vector was not evaluated or its record is unreadable (`headline` says why)."""
    if not evaluation:
        return []
    try:
        record = EvalRecord.from_dict(evaluation)
    except ValueError:
        return []
    accuracy, retention = record.heldout_accuracy, record.retention
    return [
        SweepPoint(strength=s, accuracy=accuracy.get(s), retention=retention.get(s))
        for s in sorted(set(accuracy) | set(retention))
    ]


def top_features(vector: SteeringVector, k: int = TOP_FEATURES) -> list[FeatureValue]:
    if vector.space != "sae" or vector.indices is None or vector.values is None:
        return []
    order = vector.values.abs().argsort(descending=True)[:k]
    return [FeatureValue(index=int(vector.indices[i]), value=float(vector.values[i])) for i in order]
