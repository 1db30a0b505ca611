"""The steering table: what a row's `SteerSpec` writes into its slot, composed once per distinct config.

`vectors.slots.compose` turns (vector, strength) pairs into per-layer `LayerRow`s (dense delta, negative
support); rows with equal configs share the result. The model holder checks a config at admission with it, and
the batcher writes it into slots at prefill — neither needs the other.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from server.engine.request import SteerSpec
from vectors.metadata import ModelRef, SaeRef, VectorMetadata
from vectors.sae import SparseCoder
from vectors.slots import LayerRow, compose
from vectors.vector import SteeringVector

CACHE_SIZE = 256  # distinct configs kept; the table starts afresh past it


class SteeringTable:
    """Composed steering rows by config key, for one model's SAE coders and hidden size."""

    def __init__(self, coders: Mapping[int, SparseCoder], hidden_size: int) -> None:
        self.coders = coders
        self.hidden_size = hidden_size
        self._rows: dict[tuple[object, ...], dict[int, LayerRow]] = {}

    def rows(self, spec: SteerSpec) -> dict[int, LayerRow]:
        """What `spec` writes into a slot (layer -> `LayerRow`); empty for an unsteered row."""
        if not spec.steered:
            return {}
        rows = self._rows.get(spec.key)
        if rows is None:
            rows = compose(spec.as_config(), self.coders, self.hidden_size, apply_override=spec.apply)
            if len(self._rows) >= CACHE_SIZE:
                self._rows.clear()
            self._rows[spec.key] = rows
        return rows


def adhoc_vector(
    coders: Mapping[int, SparseCoder], model: ModelRef, feature: int, layer: int | None = None
) -> SteeringVector:
    """A single-feature SAE vector (value 1 at `feature`), for `sae:<feature>` steering without training.

    Every engine builds it the same way (the native model holder; each vLLM worker from a request's name), so
    the same `sae:` name acts the same everywhere. `ValueError` names what is missing or out of range.
    """
    if not coders:
        raise ValueError("no SAE is loaded, so `sae:` steering is unavailable")
    if layer is None:
        if len(coders) > 1:
            raise ValueError(f"several SAEs are loaded (layers {sorted(coders)}); use sae:<layer>:<feature>")
        layer = next(iter(coders))
    if layer not in coders:
        raise ValueError(f"no SAE at layer {layer} (loaded: {sorted(coders)})")
    coder = coders[layer]
    if not 0 <= feature < coder.d_sae:
        raise ValueError(f"feature {feature} out of range [0, {coder.d_sae})")
    meta = VectorMetadata(
        name=f"sae/l{layer}-f{feature}",
        method="manual",
        space="sae",
        layer=layer,
        hook_name=coder.hook_name,
        model=model,
        sae=SaeRef(source=str(coder.source), d_sae=coder.d_sae, architecture=coder.architecture),
        default_strength=1.0,
        strength_range=(-1e9, 1e9),
        apply="both",
    )
    return SteeringVector.sparse(meta, torch.tensor([feature]), torch.tensor([1.0]))
