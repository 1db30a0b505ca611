"""Steering of a flat batch of tokens, as vLLM runs it: a slot per distinct config, a slot id per token.

vLLM's forward takes the tokens of every scheduled request in one flat batch (prompt chunks and decode tokens
mixed). `TokenSteering` keeps, for each decoder layer, the same fixed per-slot buffers as the native engine
(`vectors.slots.LayerSlots`, written from `server.engine.steering.SteeringTable`) plus two per-token buffers, the
slot id and "is a prompt token", that the runner's feeder writes in place before every forward (`feed`). The
layer edit (`edit`) is branch-free and reads only these buffers, so it is the same under eager, torch.compile
and CUDA-graph replay. A decoder layer of vLLM returns (hidden_states, residual) whose sum is the residual
stream; a steered token gets (steer(h), 0), an unsteered one keeps both tensors bit for bit.

Slot 0 is never written: unknown requests (warm-up, dummy batches) and padding map to it, unsteered. No vLLM
import here: the runner-side glue is `server.engine.vllm.plugin` and `.model_state`.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch

from server.engine.request import SteerSpec
from server.engine.steering import SteeringTable, adhoc_vector
from server.engine.vllm.layout import RequestSteer, SteerLayout
from vectors.catalog import Catalog
from vectors.errors import UnknownVector
from vectors.metadata import ModelRef
from vectors.sae import SparseCoder
from vectors.slots import LayerRow, LayerSlots
from vectors.vector import SteeringVector

log = logging.getLogger(__name__)

KEPT_VECTORS = 256  # vectors kept by fingerprint, so a request admitted before a hot reload still resolves
KEPT_CONFIGS = (
    256  # resolved configs kept (least recently used dropped), so `add` after `prepare` reads no file
)


class VectorSource:
    """A worker's view of the catalog: a request's names and fingerprints → vectors (a file whose fingerprint
    is not the one asked for is reloaded once; still different → `ValueError`)."""

    def __init__(self, catalog: Catalog, coders: Mapping[int, SparseCoder], model: ModelRef) -> None:
        self.catalog = catalog
        self.coders = coders
        self.model = model
        self._known: dict[str, SteeringVector] = {}

    def spec(self, steer: RequestSteer) -> SteerSpec:
        pairs = []
        for ref in steer.vectors:
            adhoc = ref.adhoc
            if adhoc is not None:
                vector = adhoc_vector(self.coders, self.model, adhoc[1], adhoc[0])
            else:
                vector = self._vector(ref.name, ref.fingerprint)
            pairs.append((vector, ref.strength))
        return SteerSpec(tuple(pairs), steer.apply)

    def _vector(self, name: str, fingerprint: str) -> SteeringVector:
        held = self._known.get(fingerprint)
        if held is not None and held.name == name:
            return held
        try:
            vector = self.catalog.get(name)
        except UnknownVector:
            vector = None
        if vector is None or vector.fingerprint != fingerprint:
            self.catalog.refresh()  # a file added or changed since this worker last looked
            vector = self.catalog.get(name)
        if vector.fingerprint != fingerprint:
            raise ValueError(
                f"{name}: this worker's file has fingerprint {vector.fingerprint[:12]}, "
                f"the request asked for {fingerprint[:12]} (the file changed and the old version is gone)"
            )
        if len(self._known) >= KEPT_VECTORS:
            del self._known[next(iter(self._known))]  # the oldest
        self._known[fingerprint] = vector
        return vector


class TokenSteering:
    """Per-slot steering tables of every hooked layer and the per-token slot map of the next forward."""

    def __init__(
        self,
        layers: Iterable[int],
        coders: Mapping[int, SparseCoder],
        d_model: int,
        layout: SteerLayout,
        source: VectorSource,
        device: torch.device,
        dtype: torch.dtype,
    ) -> None:
        self.layout = layout
        self.source = source
        self.table = SteeringTable(coders, d_model)
        self.layers = {
            i: LayerSlots(i, layout.slots, d_model, coders.get(i), layout.max_neg, device, dtype)
            for i in sorted(set(layers))
        }
        self.row_ids = torch.zeros(layout.max_tokens, dtype=torch.int64, device=device)
        self.prompt = torch.zeros(layout.max_tokens, dtype=torch.bool, device=device)
        self._slot_of_req: dict[str, int] = {}
        self._slot_of_key: dict[tuple[object, ...], int] = {}
        self._users = [0] * layout.slots
        self._free = list(range(layout.slots - 1, 0, -1))
        self._resolved: OrderedDict[tuple[object, ...], dict[int, LayerRow]] = OrderedDict()

    # --- configs ------------------------------------------------------------------------------------------
    def prepare(self, extra_args: Mapping[str, Any] | None) -> None:
        """Resolve a request's steering before it is scheduled (the front end asks every worker, through
        vLLM's `collective_rpc`): a vector that cannot be loaded, or a config this worker cannot hold, raises
        here, which fails that one request, instead of inside a model step, which would kill vLLM's engine."""
        steer = RequestSteer.from_args(extra_args)
        if steer is not None:
            self._rows(steer)

    def _rows(self, steer: RequestSteer) -> dict[int, LayerRow]:
        rows = self._resolved.get(steer.key)
        if rows is None:
            rows = self.table.rows(self.source.spec(steer))
            for layer, row in rows.items():
                if layer not in self.layers:
                    raise ValueError(f"layer {layer} is not steerable here (hooked: {sorted(self.layers)})")
                if row.neg_idx.numel() > self.layout.max_neg:
                    raise ValueError(
                        f"{row.neg_idx.numel()} negative features at layer {layer}, over "
                        f"max_neg={self.layout.max_neg}"
                    )
            if len(self._resolved) >= KEPT_CONFIGS:
                self._resolved.popitem(last=False)
            self._resolved[steer.key] = rows
        self._resolved.move_to_end(steer.key)
        return rows

    # --- requests -----------------------------------------------------------------------------------------
    def add(self, req_id: str, extra_args: Mapping[str, Any] | None) -> int:
        """Give a request its config's slot (written on first use); 0 when it is unsteered."""
        if req_id in self._slot_of_req:
            return self._slot_of_req[req_id]
        steer = RequestSteer.from_args(extra_args)
        if steer is None:
            return 0
        slot = self._slot_of_key.get(steer.key)
        if slot is None:
            slot = self._write(steer)
            self._slot_of_key[steer.key] = slot
        self._users[slot] += 1
        self._slot_of_req[req_id] = slot
        return slot

    def _write(self, steer: RequestSteer) -> int:
        rows = self._rows(steer)
        if not self._free:
            raise RuntimeError(f"all {self.layout.slots - 1} steering slots are in use")
        slot = self._free.pop()
        for i, table in self.layers.items():
            table.write(slot, rows.get(i))
        return slot

    def remove(self, req_id: str) -> None:
        """A request left: its slot is freed (cleared) with its config's last request."""
        slot = self._slot_of_req.pop(req_id, 0)
        if slot == 0:
            return
        self._users[slot] -= 1
        if self._users[slot] == 0:
            for table in self.layers.values():
                table.clear(slot)
            self._slot_of_key = {k: s for k, s in self._slot_of_key.items() if s != slot}
            self._free.append(slot)

    def requests(self) -> set[str]:
        return set(self._slot_of_req)

    def slot(self, req_id: str) -> int:
        return self._slot_of_req.get(req_id, 0)

    # --- the next forward ---------------------------------------------------------------------------------
    def feed(
        self,
        req_ids: Sequence[str],
        scheduled: Sequence[int],
        computed: Sequence[int],
        prompt_lens: Sequence[int],
    ) -> None:
        """Write the slot id and phase of every token of the next forward, in place: request i contributes
        `scheduled[i]` consecutive tokens at positions computed[i], computed[i] + 1, ...; a token is a prompt
        token when its position is inside the prompt (the native engine's prefill), else a generated one."""
        counts = torch.as_tensor(list(scheduled), dtype=torch.int64)
        total = int(counts.sum())
        if total > self.layout.max_tokens:
            raise ValueError(f"{total} tokens in one forward, the plugin holds {self.layout.max_tokens}")
        owner = torch.repeat_interleave(torch.arange(len(req_ids)), counts)
        first = torch.cumsum(counts, 0) - counts
        position = torch.as_tensor(list(computed), dtype=torch.int64)[owner] + (
            torch.arange(total) - first[owner]
        )
        is_prompt = position < torch.as_tensor(list(prompt_lens), dtype=torch.int64)[owner]
        slots = torch.as_tensor([self.slot(r) for r in req_ids], dtype=torch.int64)[owner]
        self.row_ids[:total].copy_(slots)
        self.row_ids[total:].zero_()
        self.prompt[:total].copy_(is_prompt)

    def edit(
        self, layer: int, hidden: torch.Tensor, residual: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """A decoder layer's (hidden_states, residual) → the steered pair (their sum is the residual stream)."""
        n = hidden.shape[0]
        table = self.layers[layer]
        rows = self.row_ids[:n]
        active = table.token_active(rows, self.prompt[:n])
        x = hidden + residual
        steered = table.steer(x.unsqueeze(1), rows, active).squeeze(1)
        on = active.view(-1, 1)
        return torch.where(on, steered, hidden), torch.where(on, torch.zeros_like(residual), residual)
