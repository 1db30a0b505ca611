"""Steering for a batch with a config per row (DESIGN.md §3–§4): fixed buffers per slot, written in place.

`compose` turns one config (``{vector: strength}``) into a `LayerRow` per layer: the constant dense delta
``W_decᵀu⁺`` (plus dense vectors) and the negative support ``N = {i : u_i < 0}``. `SlotSteering` holds, for every
decoder layer, buffers of a fixed shape for `slots` rows (dense delta, the encoder columns / biases / thresholds and
decoder rows of up to `max_neg` negative features, per-phase switches) and installs its hooks once. Writing a
config into a slot, clearing it, moving it and switching phases change buffer *contents* only, never shapes or
addresses, so the same forward runs eagerly, compiled or captured. The hook is branch-free: every row computes
``h + delta + W_dec[N]ᵀ max(−z_N(h), u_N)`` and `torch.where` keeps h itself (bit for bit) for rows that are
unsteered, at strength 0, or switched off in the current phase. A row with more than `max_neg` negative features
(a dense-ish trained code over a wide SAE) keeps u on them in a [d_sae] buffer and takes the exact full encode;
forwards holding such a row are the only ones that pay for it, and they run eagerly.

This is the one implementation of fast steering: the server's engine and `steer eval` (`apply_config`) both use
it; `vectors.steering.reference_steer` is the full round trip it is tested against.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from vectors.hooks import Edit, decoder_layers, install_hooks, text_config
from vectors.metadata import ApplyPhase
from vectors.sae import SparseCoder
from vectors.vector import SteeringVector

Phase = Literal["prompt", "generation"]
Config = Mapping[SteeringVector, float]
Coders = Mapping[int, SparseCoder] | Iterable[SparseCoder] | None


def coders_by_layer(coders: Coders) -> dict[int, SparseCoder]:
    """Index coders by the layer they read (a mapping layer -> coder is checked against `coder.layer`)."""
    if coders is None:
        return {}
    if isinstance(coders, Mapping):
        out = dict(coders)
        for layer, c in out.items():
            if c.layer != layer:
                raise ValueError(f"coder {c.source!r} reads layer {c.layer}, registered under layer {layer}")
        return out
    out = {}
    for c in coders:
        if c.layer in out:
            raise ValueError(f"two SAEs at layer {c.layer} ({out[c.layer].source!r}, {c.source!r})")
        out[c.layer] = c
    return out


# --------------------------------------------------------------------------------------------------------
# one config → what it does at each layer


@dataclass(frozen=True)
class LayerRow:
    """What one config does at one layer (float64, CPU; computed once per config, copied into slots)."""

    dense: torch.Tensor  # [d_model]: dense vectors + W_decᵀu⁺ (unless the SAE normalises its input)
    code_delta: torch.Tensor | None  # [d_model]: W_decᵀu⁺ of a normalising SAE (scaled per token by s(h))
    neg_idx: torch.Tensor  # [k] int64: features with u_i < 0
    neg_val: torch.Tensor  # [k] float64: u on them
    phase: ApplyPhase


def _layer_items(
    config: Config, override: ApplyPhase | None
) -> dict[int, tuple[list[tuple[SteeringVector, float]], ApplyPhase]]:
    by_layer: dict[int, list[tuple[SteeringVector, float]]] = {}
    for vector, strength in config.items():
        s = float(strength)
        if not math.isfinite(s):
            raise ValueError(f"{vector.name}: strength must be finite, got {strength!r}")
        if s != 0.0:
            by_layer.setdefault(vector.layer, []).append((vector, s))
    out = {}
    for layer, items in by_layer.items():
        phases = {override or v.meta.apply for v, _ in items}
        if len(phases) > 1:
            names = ", ".join(f"{v.name} ({v.meta.apply})" for v, _ in items)
            raise ValueError(
                f"vectors at layer {layer} have different apply phases: {names}; pass one apply for the request"
            )
        out[layer] = (items, phases.pop())
    return out


def _compose_layer(
    items: list[tuple[SteeringVector, float]],
    phase: ApplyPhase,
    coder: SparseCoder | None,
    d_model: int,
    layer: int,
) -> LayerRow | None:
    """u = Σ s·v in code space and Σ s·v in the residual stream; None when the config cancels out."""
    dense = torch.zeros(d_model, dtype=torch.float64)
    code: torch.Tensor | None = None
    for v, s in items:
        if v.space == "dense":
            assert v.dense is not None
            if v.dense.shape[0] != d_model:
                raise ValueError(
                    f"{v.name}: dense vector has d_model={v.dense.shape[0]}, model has {d_model}"
                )
            dense += s * v.dense.to(torch.float64)
            continue
        if coder is None:
            raise ValueError(
                f"{v.name}: SAE-space vector at layer {layer}, but no SAE is loaded at that layer"
            )
        assert v.meta.sae is not None and v.indices is not None and v.values is not None
        if v.meta.sae.d_sae != coder.d_sae:
            raise ValueError(f"{v.name}: vector is for d_sae={v.meta.sae.d_sae}, SAE has {coder.d_sae}")
        if code is None:
            code = torch.zeros(coder.d_sae, dtype=torch.float64)
        code.index_add_(0, v.indices, s * v.values.to(torch.float64))
    if code is not None and not bool(code.any()):
        code = None
    if code is None:
        if not bool(dense.any()):
            return None
        empty = torch.zeros(0, dtype=torch.int64)
        return LayerRow(dense, None, empty, empty.to(torch.float64), phase)
    assert coder is not None
    pos = torch.nonzero(code > 0).reshape(-1)
    neg = torch.nonzero(code < 0).reshape(-1)
    plus = code[pos] @ coder.W_dec[pos.to(coder.device)].to("cpu", torch.float64)
    if coder.normalizes:
        return LayerRow(dense, plus, neg, code[neg], phase)
    return LayerRow(dense + plus, None, neg, code[neg], phase)


def compose(
    config: Config, coders: Coders, d_model: int, *, apply_override: ApplyPhase | None = None
) -> dict[int, LayerRow]:
    """What `config` does at each layer it touches (strength-0 entries dropped; cancelling layers omitted).

    Raises `ValueError` for a non-finite strength, vectors of one layer with different phases, a d_model / d_sae
    mismatch, or an SAE-space vector at a layer without an SAE: the admission check of the server.
    """
    by_layer = coders_by_layer(coders)
    out = {}
    for layer, (items, phase) in _layer_items(config, apply_override).items():
        row = _compose_layer(items, phase, by_layer.get(layer), d_model, layer)
        if row is not None:
            out[layer] = row
    return out


# --------------------------------------------------------------------------------------------------------
# fixed per-slot buffers of one layer


class LayerSlots:
    """The steering buffers of one layer for `slots` rows; `steer` applies them to the rows of a forward."""

    def __init__(
        self,
        layer: int,
        slots: int,
        d_model: int,
        coder: SparseCoder | None,
        max_neg: int,
        device: torch.device,
        dtype: torch.dtype,
    ) -> None:
        self.layer = layer
        self.coder = coder.to(device=device, dtype=dtype) if coder is not None else None
        self.max_neg = max_neg if coder is not None else 0
        K = self.max_neg

        def zeros(*shape: int, kind: torch.dtype = dtype) -> torch.Tensor:
            return torch.zeros(*shape, dtype=kind, device=device)

        self.delta = zeros(slots, 1, d_model)
        scaled = coder is not None and coder.normalizes
        self.code_delta = zeros(slots, 1, d_model) if scaled else None
        self.on = {"prompt": zeros(slots, kind=torch.bool), "generation": zeros(slots, kind=torch.bool)}
        self.active = zeros(slots, 1, 1, kind=torch.bool)
        self.neg_idx = zeros(slots, 1, K, kind=torch.int64)
        self.neg_val = zeros(slots, 1, K)
        self.dec_w = zeros(slots, K, d_model)
        elementwise = coder is not None and coder.elementwise
        self.enc_wT = zeros(slots, d_model, K) if elementwise else None
        self.enc_b = zeros(slots, 1, K) if elementwise else None
        has_thr = elementwise and coder is not None and coder.threshold is not None
        self.enc_thr = zeros(slots, 1, K) if has_thr else None
        # A row with more negative features than `max_neg` keeps u on them here (0 elsewhere) and takes the full
        # encode: max(−z_i, 0) = 0 off its support, so the term is exact. Only eager forwards carry such rows.
        self.neg_full = zeros(slots, 1, coder.d_sae) if coder is not None else None
        self.full_slots: set[int] = set()

    def buffers(self) -> list[torch.Tensor]:
        """Every tensor this layer owns (their addresses never change)."""
        found = [self.delta, self.active, self.neg_idx, self.neg_val, self.dec_w, *self.on.values()]
        extra = (self.code_delta, self.enc_wT, self.enc_b, self.enc_thr, self.neg_full)
        return found + [t for t in extra if t is not None]

    def needs_full_encode(self, rows: slice) -> bool:
        """True when a slot in `rows` has more negative features than the gathered path holds."""
        return any(rows.start <= s < rows.stop for s in self.full_slots)

    # --- writing ------------------------------------------------------------------------------------------
    def write(self, slot: int, row: LayerRow | None) -> None:
        """Put `row` (None: unsteered) into `slot`, in place."""
        self.clear(slot)
        if row is None:
            return
        self.delta[slot, 0].copy_(row.dense)
        if row.code_delta is not None:
            assert self.code_delta is not None
            self.code_delta[slot, 0].copy_(row.code_delta)
        k = row.neg_idx.numel()
        if k > self.max_neg:
            assert self.neg_full is not None
            self.neg_full[slot, 0, row.neg_idx.to(self.neg_full.device)] = row.neg_val.to(self.neg_full)
            self.full_slots.add(slot)
        elif k:
            coder = self.coder
            assert coder is not None
            idx = row.neg_idx.to(coder.device)
            self.neg_idx[slot, 0, :k] = idx
            self.neg_val[slot, 0, :k] = row.neg_val.to(self.neg_val)
            self.dec_w[slot, :k] = coder.W_dec[idx]
            if self.enc_wT is not None and self.enc_b is not None:
                self.enc_wT[slot, :, :k] = coder.W_enc[:, idx]
                self.enc_b[slot, 0, :k] = coder.b_enc[idx]
            if self.enc_thr is not None:
                assert coder.threshold is not None
                self.enc_thr[slot, 0, :k] = coder.threshold[idx]
        self.on["prompt"][slot] = row.phase in ("prompt", "both")
        self.on["generation"][slot] = row.phase in ("generation", "both")

    def clear(self, slot: int) -> None:
        for t in self.buffers():
            t[slot].zero_()
        self.full_slots.discard(slot)

    def move(self, src: int, dst: int) -> None:
        """Copy slot `src` into slot `dst` (compaction) and clear `src`."""
        for t in self.buffers():
            t[dst].copy_(t[src])
            t[src].zero_()
        self.full_slots.discard(dst)
        if src in self.full_slots:
            self.full_slots.discard(src)
            self.full_slots.add(dst)

    # --- applying -----------------------------------------------------------------------------------------
    def steer(
        self, h: torch.Tensor, rows: slice | torch.Tensor, active: torch.Tensor | None = None
    ) -> torch.Tensor:
        """h' for the rows `rows` of the slots: consecutive slots (h [n, T, d_model]; one slot broadcasts over
        every row of h), or a slot id per token (h [N, 1, d_model], `rows` [N] int64, `active` [N, 1, 1] from
        `token_active`): a flat batch of tokens from many requests, as vLLM runs it. Slots over `max_neg`
        negative features (the eager full encode) are refused before they reach the token form."""
        out = h + self.delta[rows]
        coder = self.coder
        if coder is not None:
            code: torch.Tensor | None = None
            if self.max_neg:
                if self.enc_wT is not None and self.enc_b is not None:
                    pre = torch.matmul(coder.preprocess(h), self.enc_wT[rows]) + self.enc_b[rows]
                    z = coder.activate(pre, None if self.enc_thr is None else self.enc_thr[rows])
                else:  # TopK: z_N depends on every feature, so encode fully (still exact)
                    full = coder.encode(h)
                    idx = self.neg_idx[rows].expand(h.shape[0], h.shape[1], self.max_neg)
                    z = full.gather(-1, idx)
                code = torch.matmul(torch.maximum(-z, self.neg_val[rows]), self.dec_w[rows])
            if self.neg_full is not None and isinstance(rows, slice) and self.needs_full_encode(rows):
                z_all = coder.encode(h)
                full_term = torch.maximum(-z_all, self.neg_full[rows]) @ coder.W_dec
                code = full_term if code is None else code + full_term
            if self.code_delta is not None:
                code = self.code_delta[rows] if code is None else code + self.code_delta[rows]
            if code is not None:
                scale = coder.input_scale(h)
                out = out + (code if scale is None else code * scale).to(out.dtype)
        return torch.where(self.active[rows] if active is None else active, out, h)

    def token_active(self, rows: torch.Tensor, prompt: torch.Tensor) -> torch.Tensor:
        """[N, 1, 1]: whether each token's slot steers it, in the token's own phase (`prompt` [N] bool: a
        prompt token, else a generated one fed back) — per token, since one flat batch mixes both."""
        on = torch.where(prompt, self.on["prompt"][rows], self.on["generation"][rows])
        return on.view(-1, 1, 1)


# --------------------------------------------------------------------------------------------------------
# every layer of a model


class SlotSteering:
    """Per-slot steering buffers for every decoder layer of `model`, with hooks installed once until `close`.

    A forward covers the consecutive slots ``[start, start + n)`` (n = its batch size), set with `select`
    before it runs; `broadcast=True` makes one slot apply to every row of any batch (evaluation: one config).
    """

    def __init__(
        self,
        model: nn.Module,
        coders: Coders,
        slots: int,
        *,
        max_neg: int = 256,
        broadcast: bool = False,
        layers: Iterable[int] | None = None,
    ) -> None:
        param = next(model.parameters())
        self.d_model = int(text_config(model).hidden_size)
        self.coders = coders_by_layer(coders)
        self.slots = slots
        self.broadcast = broadcast
        hooked = sorted(set(range(len(decoder_layers(model)))) if layers is None else set(layers))
        self.layers = {
            i: LayerSlots(i, slots, self.d_model, self.coders.get(i), max_neg, param.device, param.dtype)
            for i in hooked
        }
        self._start = 0  # first slot of the next forward (its row count is the batch's: no guard on it)
        self._handles = install_hooks(model, {i: self._edit(i) for i in hooked})

    def _edit(self, layer: int) -> Edit:
        table = self.layers[layer]

        def edit(h: torch.Tensor) -> torch.Tensor:
            rows = slice(0, 1) if self.broadcast else slice(self._start, self._start + h.shape[0])
            return table.steer(h, rows)

        return edit

    def close(self) -> None:
        """Remove the hooks (the model is then unsteered)."""
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def buffers(self) -> list[torch.Tensor]:
        return [t for layer in self.layers.values() for t in layer.buffers()]

    # --- contents -----------------------------------------------------------------------------------------
    def check(self, rows: Mapping[int, LayerRow]) -> None:
        """Raise `ValueError` if `rows` steer a layer this object does not hook."""
        for layer in rows:
            if layer not in self.layers:
                raise ValueError(
                    f"layer {layer} is not steerable here (hooked layers: {sorted(self.layers)})"
                )

    def needs_full_encode(self, start: int, n: int) -> bool:
        """True when a slot in [start, start + n) has more negative features than the gathered path holds
        (such forwards run eagerly: the compiled step holds the gathered path only)."""
        rows = slice(start, start + n)
        return any(layer.needs_full_encode(rows) for layer in self.layers.values())

    def write(self, slot: int, rows: Mapping[int, LayerRow]) -> None:
        """Steer `slot` with `rows` (layer -> `LayerRow`); layers not named are unsteered."""
        self.check(rows)
        for i, layer in self.layers.items():
            layer.write(slot, rows.get(i))

    def clear(self, slot: int) -> None:
        for layer in self.layers.values():
            layer.clear(slot)

    def move(self, src: int, dst: int) -> None:
        for layer in self.layers.values():
            layer.move(src, dst)

    def select(self, start: int, n: int, phase: Phase) -> None:
        """The next forward covers slots [start, start + n), in `phase` (its switches copied into place)."""
        self._start = start
        for layer in self.layers.values():
            layer.active[start : start + n, 0, 0].copy_(layer.on[phase][start : start + n])


@contextmanager
def apply_config(
    model: nn.Module,
    config: Config,
    coders: Coders,
    *,
    phase: Phase = "prompt",
    apply_override: ApplyPhase | None = "both",
) -> Iterator[SlotSteering | None]:
    """Steer every row of every forward inside the context with one config (evaluation, scoring)."""
    by_layer = coders_by_layer(coders)
    rows = compose(config, by_layer, int(text_config(model).hidden_size), apply_override=apply_override)
    if not rows:
        yield None
        return
    max_neg = max(r.neg_idx.numel() for r in rows.values())
    steering = SlotSteering(model, by_layer, 1, max_neg=max_neg, broadcast=True, layers=rows)
    try:
        steering.write(0, rows)
        steering.select(0, 1, phase)
        yield steering
    finally:
        steering.close()
