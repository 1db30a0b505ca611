"""Per-row steering tables (DESIGN.md §4): one `LayerTable` per hooked layer for a whole batch.

R distinct steering configs become R rows (row 0 = unsteered); every batch row points at one of them through
`row_of`. Dense deltas live in `delta [R, d_model]`; the negative support of each row's code vector is padded
to K entries (`neg_idx`, `neg_val`, plus the gathered encoder/decoder rows), where padding contributes exactly
0. Shapes are fixed by `capacity_rows` / `capacity_k`, so a later CUDA-graph path can refresh contents
(`LayerTable.load_`) without changing shapes. Rows that are unsteered, steered with total strength 0, or
switched off for the current phase return `h` bit for bit (selected with `torch.where`, not computed).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Literal

import torch

from vectors.metadata import ApplyPhase
from vectors.sae import SparseCoder
from vectors.vector import SteeringVector

Phase = Literal["prompt", "generation"]
Config = Mapping[SteeringVector, float]


@dataclass
class LayerTable:
    """Steering state of one layer for one batch. Build it with `build_tables`."""

    layer: int
    delta: torch.Tensor  # [R, d_model] added to h (dense vectors, and W_decᵀu⁺ unless the SAE normalises)
    neg_idx: torch.Tensor  # [R, K] int64 negative-support features (padding: 0)
    neg_val: torch.Tensor  # [R, K] u on those features (padding: 0)
    row_of: torch.Tensor  # [B] int64 table row of each batch row
    apply_prompt: torch.Tensor  # [R] bool
    apply_generation: torch.Tensor  # [R] bool
    coder: SparseCoder | None = None
    code_delta: torch.Tensor | None = None  # [R, d_model] W_decᵀu⁺ scaled per token (normalising SAEs only)
    enc_w: torch.Tensor | None = (
        None  # [R, K, d_model] W_enc columns of neg_idx (element-wise SAEs; padding 0)
    )
    enc_b: torch.Tensor | None = None  # [R, K]
    enc_thr: torch.Tensor | None = None  # [R, K] JumpReLU thresholds
    dec_w: torch.Tensor | None = None  # [R, K, d_model] W_dec rows of neg_idx (padding 0)
    rows_used: int = 1
    # Per-batch gathers (row_of applied once, not at every forward); rebuilt after `load_`.
    _per_batch: _BatchView | None = field(default=None, repr=False, compare=False)

    @property
    def capacity_rows(self) -> int:
        return int(self.delta.shape[0])

    @property
    def capacity_k(self) -> int:
        return int(self.neg_idx.shape[1])

    @property
    def batch_size(self) -> int:
        return int(self.row_of.shape[0])

    def active_rows(self, phase: Phase) -> torch.Tensor:
        """[B] bool: which batch rows this layer steers in `phase`."""
        flags = self.apply_prompt if phase == "prompt" else self.apply_generation
        return flags[self.row_of]

    def steer(self, h: torch.Tensor, phase: Phase) -> torch.Tensor:
        """h' for a residual-stream tensor h [B, T, d_model] (or [B, d_model]) in `phase`."""
        if phase not in ("prompt", "generation"):
            raise ValueError(f"phase must be 'prompt' or 'generation', got {phase!r}")
        B = h.shape[0]
        if self.batch_size != B:
            raise ValueError(
                f"layer {self.layer}: steering table is for a batch of {self.batch_size} rows, got {B} "
                "(beam search / num_return_sequences > 1 need one table row per expanded row)"
            )
        view = self._batch_view()
        capturing = _capturing()
        if not capturing and not view.any_active[phase]:
            return h
        x = h.reshape(B, -1, h.shape[-1])
        out = x + view.delta
        coder = self.coder
        if coder is not None and (self.capacity_k or view.code_delta is not None):
            code = self._negative_term(x, view) if self.capacity_k else None
            if view.code_delta is not None:
                code = view.code_delta if code is None else code + view.code_delta
            scale = coder.input_scale(x)
            if scale is not None:
                code = code * scale  # type: ignore[operator]
            out = out + code  # type: ignore[operator]
        if capturing or not view.all_active[phase]:
            out = torch.where(view.active[phase], out, x)
        return out.reshape(h.shape)

    def _negative_term(self, x: torch.Tensor, view: _BatchView) -> torch.Tensor:
        """Σ_k W_dec[idx_k] · max(−z_idx_k(h), u_idx_k) for each batch row's negative support."""
        coder = self.coder
        assert coder is not None and view.dec_w is not None
        if coder.elementwise:
            assert view.enc_wT is not None and view.enc_b is not None
            pre = torch.baddbmm(view.enc_b, coder.preprocess(x), view.enc_wT)  # [B, T, K]
            z = coder.activate(pre, view.enc_thr)
        else:
            full = coder.encode(x)
            z = full.gather(-1, view.neg_idx.expand(x.shape[0], x.shape[1], self.capacity_k))
        m = torch.maximum(-z, view.neg_val)
        return torch.bmm(m, view.dec_w)  # [B, T, d_model]

    def _batch_view(self) -> _BatchView:
        if self._per_batch is None:
            self._per_batch = _BatchView.gather(self)
        return self._per_batch

    def load_(self, other: LayerTable) -> LayerTable:
        """Copy `other`'s contents into this table's tensors in place (same shapes); returns self."""
        for f in fields(self):
            mine, theirs = getattr(self, f.name), getattr(other, f.name)
            if isinstance(mine, torch.Tensor) or isinstance(theirs, torch.Tensor):
                if not (isinstance(mine, torch.Tensor) and isinstance(theirs, torch.Tensor)) or (
                    mine.shape != theirs.shape
                ):
                    raise ValueError(
                        f"load_: field {f.name} differs in layout; rebuild with the same capacities"
                    )
                mine.copy_(theirs)
            elif f.name != "_per_batch":
                setattr(self, f.name, theirs)
        if self._per_batch is not None:
            self._per_batch.refresh_(self)
        return self


@dataclass
class _BatchView:
    """A table's tensors indexed by batch row (`row_of` applied), shaped for batched matmuls.

    Gathered once per table instead of at every forward: decoding calls `steer` once per layer per token.
    `refresh_` rewrites the contents in place (same shapes), so tensors captured in a CUDA graph stay valid.
    """

    delta: torch.Tensor  # [B, 1, d_model]
    code_delta: torch.Tensor | None  # [B, 1, d_model]
    neg_idx: torch.Tensor  # [B, 1, K]
    neg_val: torch.Tensor  # [B, 1, K]
    enc_wT: torch.Tensor | None  # [B, d_model, K]
    enc_b: torch.Tensor | None  # [B, 1, K]
    enc_thr: torch.Tensor | None  # [B, 1, K]
    dec_w: torch.Tensor | None  # [B, K, d_model]
    active: dict[str, torch.Tensor]  # phase -> [B, 1, 1] bool
    any_active: dict[str, bool]
    all_active: dict[str, bool]

    @staticmethod
    def gather(table: LayerTable) -> _BatchView:
        rows = table.row_of

        def take(t: torch.Tensor | None) -> torch.Tensor | None:
            return None if t is None else t[rows].contiguous()

        def take_row_vector(t: torch.Tensor | None) -> torch.Tensor | None:
            return None if t is None else t[rows].unsqueeze(1).contiguous()

        enc_w = take(table.enc_w)
        active = {
            "prompt": table.apply_prompt[rows].view(-1, 1, 1),
            "generation": table.apply_generation[rows].view(-1, 1, 1),
        }
        flags = {phase: a.reshape(-1).tolist() for phase, a in active.items()}
        return _BatchView(
            delta=take_row_vector(table.delta),  # type: ignore[arg-type]
            code_delta=take_row_vector(table.code_delta),
            neg_idx=take_row_vector(table.neg_idx),  # type: ignore[arg-type]
            neg_val=take_row_vector(table.neg_val),  # type: ignore[arg-type]
            enc_wT=None if enc_w is None else enc_w.transpose(1, 2).contiguous(),
            enc_b=take_row_vector(table.enc_b),
            enc_thr=take_row_vector(table.enc_thr),
            dec_w=take(table.dec_w),
            active=active,
            any_active={phase: any(f) for phase, f in flags.items()},
            all_active={phase: all(f) for phase, f in flags.items()},
        )

    def refresh_(self, table: LayerTable) -> None:
        fresh = _BatchView.gather(table)
        for f in fields(self):
            mine, theirs = getattr(self, f.name), getattr(fresh, f.name)
            if isinstance(mine, torch.Tensor):
                mine.copy_(theirs)
            elif isinstance(mine, dict) and f.name == "active":
                for phase, t in mine.items():
                    t.copy_(theirs[phase])
            else:
                setattr(self, f.name, theirs)


def _capturing() -> bool:
    return torch.cuda.is_available() and torch.cuda.is_current_stream_capturing()


def coders_by_layer(
    coders: Mapping[int, SparseCoder] | Iterable[SparseCoder] | None,
) -> dict[int, SparseCoder]:
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


@dataclass(frozen=True)
class _RowSpec:
    """One distinct (layer-restricted) config: summed dense delta, summed code vector, phases."""

    dense: torch.Tensor  # [d_model] float64
    code: torch.Tensor | None  # [d_sae] float64
    phase: ApplyPhase


def _row_key(items: list[tuple[SteeringVector, float]], phase: ApplyPhase) -> tuple[object, ...]:
    return (phase, tuple(sorted((v.fingerprint, s) for v, s in items)))


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


def _spec(
    items: list[tuple[SteeringVector, float]],
    phase: ApplyPhase,
    coder: SparseCoder | None,
    d_model: int,
    layer: int,
) -> _RowSpec | None:
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
    if code is None and not bool(dense.any()):
        return None  # the config cancels out: unsteered
    return _RowSpec(dense=dense, code=code, phase=phase)


def check_config(
    config: Config,
    coders: Mapping[int, SparseCoder] | Iterable[SparseCoder] | None,
    d_model: int,
    *,
    apply_override: ApplyPhase | None = None,
) -> None:
    """Raise `ValueError` where `build_tables` would for this one config, without building any table.

    For admission checks: the same rules (finite strengths, one phase per layer, d_model / d_sae match, an SAE at
    every SAE-space vector's layer) at the cost of composing the config, not of gathering encoder/decoder rows.
    """
    by_layer = coders_by_layer(coders)
    for layer, (items, phase) in _layer_items(config, apply_override).items():
        _spec(items, phase, by_layer.get(layer), d_model, layer)


def build_tables(
    configs: Sequence[Config],
    coders: Mapping[int, SparseCoder] | Iterable[SparseCoder] | None,
    d_model: int,
    *,
    apply_override: ApplyPhase | Sequence[ApplyPhase | None] | None = None,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    capacity_rows: int | None = None,
    capacity_k: int | None = None,
    layers: Iterable[int] | None = None,
) -> dict[int, LayerTable]:
    """Tables for a batch: `configs[b]` is batch row b's ``{vector: strength}`` map (strength scales v: u = s·v).

    Identical configs (per layer) share a row; strength-0 entries are dropped, and a config that adds up to
    zero uses row 0. `apply_override` (one value, or one per batch row) replaces each vector's `apply`.
    Vectors of one row at one layer must agree on the phase (`ValueError` otherwise). `layers` forces tables
    for those layers even when nothing steers them. Pass coders already on `device`/`dtype` to avoid copies.
    """
    B = len(configs)
    if B == 0:
        raise ValueError("build_tables needs at least one batch row")
    if apply_override is None or isinstance(apply_override, str):
        overrides: list[ApplyPhase | None] = [apply_override] * B  # type: ignore[list-item]
    else:
        overrides = list(apply_override)
        if len(overrides) != B:
            raise ValueError(f"apply_override has {len(overrides)} entries for {B} batch rows")
    by_layer = coders_by_layer(coders)

    # per layer: distinct row specs and each batch row's row index
    keys: dict[int, dict[tuple[object, ...], int]] = {}
    specs: dict[int, list[_RowSpec]] = {}
    row_of: dict[int, list[int]] = {}
    for layer in layers or ():
        keys.setdefault(layer, {})
        specs.setdefault(layer, [])
        row_of.setdefault(layer, [0] * B)
    for b, (config, override) in enumerate(zip(configs, overrides, strict=True)):
        for layer, (items, phase) in _layer_items(config, override).items():
            keys.setdefault(layer, {})
            specs.setdefault(layer, [])
            rows = row_of.setdefault(layer, [0] * B)
            key = _row_key(items, phase)
            if key not in keys[layer]:
                spec = _spec(items, phase, by_layer.get(layer), d_model, layer)
                if spec is None:
                    keys[layer][key] = 0
                else:
                    specs[layer].append(spec)
                    keys[layer][key] = len(specs[layer])
            rows[b] = keys[layer][key]

    return {
        layer: _layer_table(
            layer,
            specs[layer],
            row_of[layer],
            by_layer.get(layer),
            d_model,
            device,
            dtype,
            capacity_rows,
            capacity_k,
        )
        for layer in sorted(row_of)
    }


def _layer_table(
    layer: int,
    specs: list[_RowSpec],
    row_of: list[int],
    coder: SparseCoder | None,
    d_model: int,
    device: torch.device | str,
    dtype: torch.dtype,
    capacity_rows: int | None,
    capacity_k: int | None,
) -> LayerTable:
    R_used = 1 + len(specs)
    R = capacity_rows or R_used
    if R_used > R:
        raise ValueError(f"layer {layer}: {R_used} distinct steering rows exceed capacity_rows={R}")
    negs = [torch.nonzero(s.code < 0).reshape(-1) if s.code is not None else None for s in specs]
    K_used = max((n.numel() for n in negs if n is not None), default=0)
    K = K_used if capacity_k is None else capacity_k
    if K_used > K:
        raise ValueError(f"layer {layer}: {K_used} negative features exceed capacity_k={K}")
    needs_coder = any(s.code is not None for s in specs)
    scaled = coder is not None and coder.normalizes

    delta = torch.zeros(R, d_model, dtype=torch.float64)
    code_delta = torch.zeros(R, d_model, dtype=torch.float64) if scaled else None
    neg_idx = torch.zeros(R, K, dtype=torch.int64)
    neg_val = torch.zeros(R, K, dtype=torch.float64)
    apply_prompt = torch.zeros(R, dtype=torch.bool)
    apply_generation = torch.zeros(R, dtype=torch.bool)
    for r, (spec, neg) in enumerate(zip(specs, negs, strict=True), start=1):
        delta[r] = spec.dense
        apply_prompt[r] = spec.phase in ("prompt", "both")
        apply_generation[r] = spec.phase in ("generation", "both")
        if spec.code is None:
            continue
        assert coder is not None and neg is not None
        pos = torch.nonzero(spec.code > 0).reshape(-1)
        w = coder.W_dec[pos.to(coder.device)].to("cpu", torch.float64)
        plus = spec.code[pos] @ w
        if code_delta is not None:
            code_delta[r] = plus
        else:
            delta[r] += plus
        neg_idx[r, : neg.numel()] = neg
        neg_val[r, : neg.numel()] = spec.code[neg]

    table = LayerTable(
        layer=layer,
        delta=delta.to(device, dtype),
        neg_idx=neg_idx.to(device),
        neg_val=neg_val.to(device, dtype),
        row_of=torch.tensor(row_of, dtype=torch.int64, device=device),
        apply_prompt=apply_prompt.to(device),
        apply_generation=apply_generation.to(device),
        code_delta=None if code_delta is None else code_delta.to(device, dtype),
        rows_used=R_used,
    )
    if coder is not None and (needs_coder or K > 0 or scaled):
        _attach_coder(table, coder.to(device=device, dtype=dtype), neg_idx, K, R_used)
    return table


def _attach_coder(table: LayerTable, coder: SparseCoder, neg_idx: torch.Tensor, K: int, R_used: int) -> None:
    """Gather encoder columns / decoder rows of each row's negative support (zeros for padding)."""
    table.coder = coder
    R = table.capacity_rows
    dev = coder.device
    idx = neg_idx.to(dev)
    valid = torch.zeros(R, K, dtype=torch.bool, device=dev)
    valid[:R_used] = table.neg_val[:R_used].to(dev) != 0
    mask = valid.unsqueeze(-1).to(coder.dtype)
    table.dec_w = coder.W_dec[idx] * mask  # [R, K, d_model]
    if coder.elementwise:
        table.enc_w = coder.W_enc.T[idx] * mask
        table.enc_b = coder.b_enc[idx] * valid.to(coder.dtype)
        if coder.threshold is not None:
            table.enc_thr = coder.threshold[idx] * valid.to(coder.dtype)
