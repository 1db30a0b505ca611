"""The steering table: what a row's `SteerSpec` writes into its slot, composed once per distinct config.

`vectors.slots.compose` turns (vector, strength) pairs into per-layer `LayerRow`s (dense delta, negative
support); rows with equal configs share the result. The model holder checks a config at admission with it, and
the batcher writes it into slots at prefill — neither needs the other.
"""

from __future__ import annotations

from collections.abc import Mapping

from server.engine.request import SteerSpec
from vectors.sae import SparseCoder
from vectors.slots import LayerRow, compose

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
