"""Steering resolution: the names of a request (`steer`, a steered model id) to vectors and strengths.

Catalog names, ad-hoc `sae:<feature>` vectors and strength ranges (checked or clamped) are resolved here, once
per request, and checked against the engine; a steered model id (`<base>:<vector>@<strength>`) is read here too.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any

from server.engine.client import EngineClient
from server.engine.request import SteerSpec
from server.errors import ApiError, invalid
from server.model_ids import ModelIdError, parse_model_id
from server.protocol.common import AppliedVector
from server.settings import ServerSettings
from vectors.metadata import ApplyPhase

ADHOC = re.compile(r"sae:(?:(\d{1,6}):)?(\d{1,9})")
ADHOC_HELP = (
    "steer on one SAE feature with `sae:<feature>` (or `sae:<layer>:<feature>` when several SAEs are loaded)"
)


class SteeringResolver:
    """Vector names → a `SteerSpec` and what was applied, against the engine and the live catalog."""

    def __init__(self, engine: EngineClient, catalog: Any, settings: ServerSettings) -> None:
        self.engine = engine
        self.catalog = catalog
        self.settings = settings

    def resolve_steer(
        self, steer: Mapping[str, float], apply: ApplyPhase | None, field: str = "steer"
    ) -> tuple[SteerSpec, list[AppliedVector]]:
        """Names → vectors (resolved now, kept for the request's lifetime), strengths checked or clamped.

        `field` is where the names came from: `steer` (errors name `steer.<name>`) or `model` (a steered id).
        """
        limit = self.settings.max_vectors_per_request
        if len(steer) > limit:
            raise invalid(field, f"`{field}` has {len(steer)} vectors; at most {limit} per request")
        pairs: list[tuple[Any, float]] = []
        applied: list[AppliedVector] = []
        for name, requested in steer.items():
            param = f"steer.{name}" if field == "steer" else field
            if not math.isfinite(requested):
                raise invalid(param, f"strength of {name!r} must be a finite number, got {requested}")
            vector, lo, hi = self._lookup(name, param)
            strength = requested
            if not lo <= requested <= hi:
                if self.settings.strength_policy == "reject":
                    raise invalid(
                        param,
                        f"strength {requested} of {name!r} is outside its strength_range [{lo}, {hi}]"
                        " (server policy: reject; clamp with STEER_STRENGTH_POLICY=clamp)",
                    )
                strength = min(max(requested, lo), hi)
            applied.append(
                AppliedVector(
                    name=name,
                    strength=strength,
                    requested_strength=requested,
                    clamped=strength != requested,
                    layer=vector.layer,
                    method=vector.meta.method,
                    space=vector.space,
                    apply=apply or vector.meta.apply,
                )
            )
            if strength != 0.0:  # strength 0 is reported but costs nothing: exactly the unsteered row
                pairs.append((vector, float(strength)))
        spec = SteerSpec(tuple(pairs), apply)
        try:
            self.engine.check_steer(spec)
        except ValueError as exc:
            raise invalid(field, f"incompatible steering: {exc}") from None
        return spec, applied

    # --- model ids ----------------------------------------------------------------------------------------
    @property
    def model_aliases(self) -> tuple[str, ...]:
        """Other names of the base model in /v1 requests: the `--model` value as given (a hub id, a path)."""
        given = self.settings.model
        return (given,) if given != self.engine.name else ()

    def resolve_model(self, model: str, steer: Mapping[str, float]) -> tuple[dict[str, float], str]:
        """The steering a /v1 request asks for, and the field it came from (`model` or `steer`).

        A steered model id names its vectors (a missing strength is the vector's default); it cannot be combined
        with a body `steer`. Another model than this server's is a 404 naming `model`.
        """
        try:
            parsed = parse_model_id(model, self.engine.name, self.model_aliases)
        except ModelIdError as exc:
            raise invalid("model", f"model {model!r}: {exc} (GET /v1/models lists the ids)") from None
        if parsed is None:
            raise ApiError(
                404,
                f"model {model!r} is not served here; this server serves {self.engine.name!r} and its steered "
                f"ids {self.engine.name!r}:<vector>[@<strength>] (GET /v1/models)",
                type="model_not_found",
                param="model",
            )
        if not parsed.steered:
            return dict(steer), "steer"
        if steer:
            raise invalid(
                "model", f"model {model!r} is steered already; give steering in `model` or `steer`, not both"
            )
        resolved: dict[str, float] = {}
        for name, strength in parsed.terms:
            if strength is None:
                vector, _, _ = self._lookup(name, "model")
                strength = float(vector.meta.default_strength)
            resolved[name] = strength
        return resolved, "model"

    def _lookup(self, name: str, param: str) -> tuple[Any, float, float]:
        from vectors.errors import InvalidVectorName, UnknownVector

        m = ADHOC.fullmatch(name)
        if m is not None:
            layer = int(m.group(1)) if m.group(1) is not None else None
            try:
                vector = self.engine.adhoc_vector(int(m.group(2)), layer)
            except ValueError as exc:
                raise invalid(param, f"{name!r}: {exc}") from None
            cap = self.settings.adhoc_strength_limit
            return vector, -cap, cap
        if name.startswith("sae:"):
            raise invalid(param, f"malformed ad-hoc vector {name!r}: {ADHOC_HELP}")
        try:
            vector = self.catalog.get(name)
        except (UnknownVector, InvalidVectorName, KeyError, ValueError):
            raise ApiError(
                422,
                f"unknown steering vector {name!r} (GET /vectors lists the catalog; {ADHOC_HELP})",
                param=param,
                type="unknown_vector",
            ) from None
        lo, hi = vector.meta.strength_range
        return vector, float(lo), float(hi)
