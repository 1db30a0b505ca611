"""`train_vector`: make one steering vector (yapo, bipo, caa or sas) and write it to the catalog.

YaPO / BiPO: the optimisation loop of `trainer.preference` (`PreferenceRun`: setup or resume, one step,
bookkeeping); this module turns its result into a vector file with its training metadata.

CAA / SAS: mean differences of block-L activations (CAA) or of their SAE codes (SAS) at the last
token of prompt+chosen vs prompt+rejected.

Every finished vector carries `training.effect` (`trainer.effect`): its residual shift and what it does to the
training pairs' margins at strength 1, so a vector too weak to matter says so when it is made.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from trainer.config import PREFERENCE_METHODS, SAE_METHODS, TrainConfig, TrainMethod
from trainer.data import DataError, PreferencePair, load_pairs, pairs_hash
from trainer.effect import measure_effect
from trainer.logprobs import pair_rows
from trainer.objectives import (
    keep_top_k,
    last_token_states,
    mean_difference,
    threshold_relative,
)
from trainer.plots import moving_average, plot_loss_curves
from trainer.preference import (
    PreferenceRun,
    batch_for,
    batch_indices,
    direction_for,
    lr_factor,
    reference_logprobs,
)
from trainer.resources import Resources, load_resources
from trainer.retention import load_retention_pairs
from trainer.tokens import EncodedPair, EncodeStats, encode_pairs
from vectors.io import load_vector, save_vector
from vectors.metadata import SaeRef, VectorMetadata, dense_hook_name
from vectors.names import vector_path
from vectors.training_record import Effect, Hyperparameters, LossCurve, RetentionRecord, TrainingRecord
from vectors.vector import SteeringVector


@dataclass
class TrainResult:
    """What a run produced: the vector (and its file), the loss history and throughput."""

    vector: SteeringVector | None
    path: Path | None
    steps: int
    final_loss: float | None
    losses: list[float]
    history: list[dict[str, Any]]
    seconds: float
    pairs_per_second: float | None
    encode_stats: dict[str, int]
    log_path: Path | None = None
    completed: bool = True
    effect: Effect | None = None  # what the vector does at strength 1 (None for an unfinished run)

    def steps_to_loss(self, threshold: float = 0.1, window: int = 10) -> int | None:
        """First step at which the trailing mean loss over `window` steps is below `threshold`."""
        return steps_to_loss(self.losses, threshold, window)

    def to_dict(self) -> dict[str, Any]:
        """JSON of everything but the vector itself, which `from_dict` reads back from `path`."""
        return {
            "path": str(self.path) if self.path else None,
            "steps": self.steps,
            "final_loss": self.final_loss,
            "losses": self.losses,
            "history": self.history,
            "seconds": self.seconds,
            "pairs_per_second": self.pairs_per_second,
            "encode_stats": self.encode_stats,
            "log_path": str(self.log_path) if self.log_path else None,
            "completed": self.completed,
            "effect": self.effect.to_dict() if self.effect else None,
        }

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> TrainResult:
        """The result of `to_dict`, with the vector loaded from its file (a run in another process)."""
        path = Path(raw["path"]) if raw.get("path") else None
        return cls(
            vector=load_vector(path) if path else None,
            path=path,
            steps=int(raw["steps"]),
            final_loss=raw.get("final_loss"),
            losses=[float(x) for x in raw["losses"]],
            history=list(raw.get("history", [])),
            seconds=float(raw["seconds"]),
            pairs_per_second=raw.get("pairs_per_second"),
            encode_stats=dict(raw.get("encode_stats", {})),
            log_path=Path(raw["log_path"]) if raw.get("log_path") else None,
            completed=bool(raw.get("completed", True)),
            effect=Effect.from_dict(raw["effect"]) if raw.get("effect") else None,
        )


def steps_to_loss(losses: Sequence[float], threshold: float = 0.1, window: int = 10) -> int | None:
    for i, v in enumerate(moving_average(list(losses), window)):
        if i + 1 >= min(window, len(losses)) and v < threshold:
            return i + 1
    return None


# --------------------------------------------------------------------------------------------------------
# entry point


def train_vector(
    cfg: TrainConfig,
    *,
    resources: Resources | None = None,
    pairs: Sequence[PreferencePair] | None = None,
    retain: Sequence[PreferencePair] | None = None,
) -> TrainResult:
    """Train (or estimate) one vector per `cfg`; write it to the catalog when `cfg.out` is set.

    `resources` (model/tokenizer/SAE already loaded), `pairs` (already loaded data) and `retain`
    (retention pairs, `trainer.retention.retention_pairs`) skip the corresponding loading steps; the
    demo and tests pass them to train many vectors cheaply.
    """
    cfg.validate(loaded=resources is not None)
    if pairs is None:  # data first: its errors are cheap to find, the model is slow to load
        if not cfg.data:
            raise DataError("no training data given (--data)")
        pairs = load_pairs(cfg.data, columns=cfg.columns, where=cfg.where)
    if retain is None and cfg.retain:
        retain = load_retention_pairs(cfg.retain)
    if retain and cfg.method not in PREFERENCE_METHODS:
        raise ValueError(f"retention data applies to yapo and bipo, not {cfg.method}")
    if resources is None:
        resources = load_resources(cfg.model, cfg.sae, device=cfg.device, dtype=cfg.dtype)
    if cfg.method in SAE_METHODS and resources.coder is None:
        raise ValueError(f"method {cfg.method} needs an SAE")
    layer = _layer(cfg, resources)
    encoded, stats = encode_pairs(
        resources.tokenizer,
        pairs,
        max_length=cfg.max_length,
        overlong=cfg.overlong,
        source=cfg.data or "pairs",
    )
    torch.manual_seed(cfg.seed)
    if cfg.method in PREFERENCE_METHODS:
        retained: list[EncodedPair] = []
        if retain:
            retained, _ = encode_pairs(
                resources.tokenizer,
                retain,
                max_length=cfg.max_length,
                overlong=cfg.overlong,
                source=cfg.retain or "retention facts",
            )
        return _train_preference(cfg, resources, pairs, encoded, stats, layer, retained, retain or ())
    return _estimate_mean_difference(cfg, resources, pairs, encoded, stats, layer)


def _layer(cfg: TrainConfig, res: Resources) -> int:
    layer = cfg.layer
    if res.coder is not None and cfg.method in SAE_METHODS:
        if layer is not None and layer != res.coder.layer:
            raise ValueError(
                f"--layer {layer} differs from the SAE's layer {res.coder.layer} ({res.coder.hook_name})"
            )
        layer = res.coder.layer
    elif layer is None and res.coder is not None:
        layer = res.coder.layer
    assert layer is not None
    if not 0 <= layer < res.num_layers:
        raise ValueError(f"layer {layer} out of range for a {res.num_layers}-layer model")
    return layer


def _train_preference(
    cfg: TrainConfig,
    res: Resources,
    pairs: Sequence[PreferencePair],
    encoded: list[EncodedPair],
    stats: EncodeStats,
    layer: int,
    retained: Sequence[EncodedPair] = (),
    retain_pairs: Sequence[PreferencePair] = (),
) -> TrainResult:
    """Set up (or resume) the run, train to the end (or `stop_after`), then write the vector and its metadata."""
    run = PreferenceRun.setup(cfg, res, layer, pairs, encoded, stats, retained, retain_pairs)
    end = run.total if cfg.stop_after is None else min(run.total, cfg.stop_after)
    elapsed = run.train(end, progress=cfg.progress)
    seconds = run.seconds + elapsed
    trained = end - run.start
    pps = trained * cfg.batch_size / elapsed if trained and elapsed > 0 else None
    log_path = run.write_log()
    if log_path is not None:
        plot_loss_curves(
            {f"{cfg.method} {cfg.name}": run.losses}, log_path.with_suffix(".png"), title=cfg.name
        )
    losses, history = run.losses, run.history
    common: dict[str, Any] = {
        "losses": losses,
        "history": history,
        "seconds": seconds,
        "pairs_per_second": pps,
        "encode_stats": stats.as_dict(),
        "log_path": log_path,
    }
    if end < run.total:
        last = losses[-1] if losses else None
        return TrainResult(vector=None, path=None, steps=end, final_loss=last, completed=False, **common)
    v = run.steer.vector()
    if cfg.method == "yapo":
        v = keep_top_k(v, cfg.top_k)
    tail = losses[-cfg.log_every :]
    final = float(sum(tail) / len(tail)) if tail else None
    training = _training_record(
        cfg,
        run.data_hash,
        len(pairs),
        stats,
        layer,
        steps=run.total,
        warmup_steps=run.warmup,
        final_loss=final,
        steps_to_loss=steps_to_loss(losses, 0.1),
        seconds=round(seconds, 2),
        loss_curve=loss_curve(history),
    )
    if run.m:
        retention = RetentionRecord(
            data=Path(cfg.retain).name if cfg.retain else None,
            data_hash=run.retain_hash,
            pairs=run.m,
            weight=cfg.retain_weight,
            batch_size=cfg.retain_batch_size,
            margin=cfg.retain_margin,
            strengths=(1.0, *cfg.retain_strengths),
            final_penalty=history[-1].get("retain_penalty") if history else None,
        )
        training = training.model_copy(update={"retain": retention})
    vector, effect = _finish(cfg, res, layer, v, training, encoded)
    return TrainResult(
        vector=vector, path=_save(cfg, vector), steps=run.total, final_loss=final, effect=effect, **common
    )


def _finish(
    cfg: TrainConfig,
    res: Resources,
    layer: int,
    v: torch.Tensor,
    training: TrainingRecord,
    encoded: Sequence[EncodedPair],
) -> tuple[SteeringVector, Effect]:
    """The vector with its training metadata, and what it does at strength 1 (recorded as training.effect)."""
    effect = measure_effect(res, _make_vector(cfg, res, layer, v, training), encoded)
    return _make_vector(cfg, res, layer, v, training.model_copy(update={"effect": effect})), effect


def loss_curve(history: Sequence[Mapping[str, Any]], max_points: int = 200) -> LossCurve:
    """The logged mean losses at their steps for the vector's metadata (the playground plots them), thinned to at
    most `max_points` so a long run keeps its file header small; the last point is kept."""
    points = [(int(h["step"]), round(float(h["loss"]), 5)) for h in history]
    if len(points) > max_points:
        stride = math.ceil(len(points) / max_points)
        points = [*points[::stride][: max_points - 1], points[-1]]
    return LossCurve(step=tuple(s for s, _ in points), loss=tuple(v for _, v in points))


def _training_record(
    cfg: TrainConfig, data_hash: str, n_pairs: int, stats: EncodeStats, layer: int, **method_fields: Any
) -> TrainingRecord:
    """What every method records, plus `method_fields` (TrainingRecord fields only: an unknown name is an error,
    not an extra key); `target` only when the run was given one."""
    unknown = set(method_fields) - set(TrainingRecord.model_fields)
    if unknown:
        raise TypeError(f"not TrainingRecord fields: {sorted(unknown)}")
    record = TrainingRecord(
        method=cfg.method,
        data=Path(cfg.data).name if cfg.data else None,
        data_hash=data_hash,
        where=dict(cfg.where),
        pairs=n_pairs,
        encode=stats.as_dict(),
        layer=layer,
        hyperparameters=Hyperparameters(**{k: getattr(cfg, k) for k in Hyperparameters.model_fields}),
        reference_mode=cfg.reference_mode,
        **method_fields,
    )
    return record.model_copy(update={"target": cfg.target}) if cfg.target else record


def _make_vector(
    cfg: TrainConfig, res: Resources, layer: int, v: torch.Tensor, training: TrainingRecord
) -> SteeringVector:
    sae_space = cfg.method in SAE_METHODS
    coder = res.coder
    meta = VectorMetadata(
        name=cfg.name,
        method=cfg.method,
        space="sae" if sae_space else "dense",
        layer=layer,
        hook_name=coder.hook_name if sae_space else dense_hook_name(layer),
        model=res.model_ref(),
        sae=SaeRef(source=res.sae_source or coder.source, d_sae=coder.d_sae, architecture=coder.architecture)
        if sae_space
        else None,
        apply=cfg.apply,
        training=training,
    )
    if sae_space:
        return SteeringVector.from_code(meta, v)
    return SteeringVector.dense_vector(meta, v)


def _save(cfg: TrainConfig, vector: SteeringVector) -> Path | None:
    if not cfg.out:
        return None
    return save_vector(vector, vector_path(cfg.out, cfg.name))


# --------------------------------------------------------------------------------------------------------
# CAA / SAS


@torch.no_grad()
def last_token_activations(
    res: Resources, encoded: Sequence[EncodedPair], layer: int, batch_pairs: int = 32
) -> tuple[torch.Tensor, torch.Tensor]:
    """Block-`layer` output at the last token of prompt+chosen and of prompt+rejected, [N, d_model] each."""
    rows = pair_rows(encoded)
    n = len(encoded)
    chosen, rejected = [], []
    for start in range(0, n, batch_pairs):
        idx = list(range(start, min(n, start + batch_pairs)))
        h = last_token_states(res.model, batch_for(rows, idx, n, res.device), layer).cpu()
        chosen.append(h[: len(idx)])
        rejected.append(h[len(idx) :])
    return torch.cat(chosen), torch.cat(rejected)


def _estimate_mean_difference(
    cfg: TrainConfig,
    res: Resources,
    pairs: Sequence[PreferencePair],
    encoded: list[EncodedPair],
    stats: EncodeStats,
    layer: int,
) -> TrainResult:
    t0 = time.perf_counter()
    h_w, h_l = last_token_activations(res, encoded, layer)
    if cfg.method == "caa":
        v = mean_difference(h_w, h_l)
    else:
        coder = res.coder
        z_w = coder.encode(h_w.to(coder.device)).float().cpu()
        z_l = coder.encode(h_l.to(coder.device)).float().cpu()
        v = keep_top_k(threshold_relative(mean_difference(z_w, z_l), cfg.tau), cfg.top_k)
    seconds = time.perf_counter() - t0
    training = _training_record(
        cfg,
        pairs_hash(pairs),
        len(pairs),
        stats,
        layer,
        position="last token of prompt+response",
        seconds=round(seconds, 2),
    )
    vector, effect = _finish(cfg, res, layer, v, training, encoded)
    return TrainResult(
        vector=vector,
        path=_save(cfg, vector),
        steps=0,
        final_loss=None,
        losses=[],
        history=[],
        seconds=seconds,
        pairs_per_second=len(encoded) / seconds if seconds else None,
        encode_stats=stats.as_dict(),
        effect=effect,
    )


__all__ = [
    "PREFERENCE_METHODS",
    "TrainConfig",
    "TrainMethod",
    "TrainResult",
    "batch_indices",
    "direction_for",
    "last_token_activations",
    "loss_curve",
    "lr_factor",
    "reference_logprobs",
    "steps_to_loss",
    "train_vector",
]
