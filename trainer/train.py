"""`train_vector`: make one steering vector (yapo, bipo, caa or sas) and write it to the catalog.

YaPO / BiPO: AdamW on a float32 vector (zero-init), cosine schedule with linear warmup, gradient
clipping, one direction d ∈ {+1, −1} per batch, loss `−log σ(d·β·margin)` with π_0 log-probs computed
once before training and cached (`reference_mode=True` reproduces the reference implementation's
cost instead: full SAE round trip at every token and π_0 recomputed every step). Batch order and d
are pure functions of (seed, step), so a resumed run continues bit for bit.

CAA / SAS: mean differences of block-L activations (CAA) or of their SAE codes (SAS) at the last
token of prompt+chosen vs prompt+rejected.
"""

from __future__ import annotations

import contextlib
import json
import math
import random
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from tqdm.auto import tqdm

from trainer.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from trainer.data import Columns, DataError, PreferencePair, load_pairs, pairs_hash
from trainer.layer_cache import LowerLayerCache
from trainer.logprobs import make_batch, pair_rows, response_logprobs
from trainer.objectives import (
    BipoSteer,
    YapoSteer,
    capture_last_token,
    keep_top_k,
    mean_difference,
    preference_loss,
    preference_margin,
    soft_threshold_,
    threshold_relative,
)
from trainer.plots import moving_average, plot_loss_curves
from trainer.resources import Resources, load_resources
from trainer.retention import load_retention_pairs, retention_penalty
from trainer.tokens import EncodedPair, EncodeStats, Overlong, encode_pairs
from vectors.hooks import layer_hook
from vectors.io import save_vector, write_atomic
from vectors.metadata import SaeRef, VectorMetadata, dense_hook_name
from vectors.names import validate_name, vector_path
from vectors.vector import SteeringVector

TrainMethod = Literal["yapo", "bipo", "caa", "sas"]
PREFERENCE_METHODS = ("yapo", "bipo")
SAE_METHODS = ("yapo", "sas")


@dataclass
class TrainConfig:
    """Everything that defines one training run (CLI flags map one-to-one onto these fields)."""

    method: TrainMethod
    model: str
    data: str | None = None
    name: str = "custom/vector"
    out: str | None = None  # catalog root; the vector goes to <out>/<namespace>/<leaf>.safetensors
    sae: str | None = None
    layer: int | None = None  # default: the SAE's layer
    columns: Columns = field(default_factory=Columns)
    where: dict[str, str] = field(default_factory=dict)
    # optimisation (yapo / bipo)
    beta: float = 0.1
    lr: float = 5e-4
    epochs: int = 20
    max_steps: int | None = None  # overrides epochs
    batch_size: int = 4
    warmup_steps: int | None = None  # default: min(100, 10 % of the steps)
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    seed: int = 11
    # data
    max_length: int = 512
    overlong: Overlong = "error"
    # sparsification
    top_k: int | None = None
    l1: float = 0.0  # proximal L1 (soft-threshold lr·l1 per step: exact zeros)
    tau: float = 0.0  # sas: drop entries below tau · max|v|
    # retention (yapo / bipo): multiple-choice facts whose answers the vector must not break
    retain: str | None = None  # file of {prompt, options, answer} rows (the `steer eval --neutral` format)
    retain_weight: float = 1.0
    retain_batch_size: int = 16  # retention pairs scored per step, next to the preference batch
    # nats each answer must keep over a wrong option (None: π_0's whole lead)
    retain_margin: float | None = None
    # bookkeeping
    log_every: int = 10
    log_dir: str | None = None  # default: <out>/../train-logs
    checkpoint_every: int = 100
    resume: bool = False
    stop_after: int | None = None  # stop (checkpoint kept, no vector written) after this many steps
    device: str = "cpu"
    dtype: str = "float32"
    reference_mode: bool = False
    cache_activations: bool = True  # cache block-L outputs (+ SAE codes) per row; skip blocks 0..L per step
    progress: bool = True
    target: str | None = None  # what the vector is for (e.g. a country), recorded in metadata
    apply: Literal["prompt", "generation", "both"] = "both"

    def validate(self, *, loaded: bool = False) -> None:
        """Check the settings; `loaded` when model and SAE come ready-made (then no --sae needed)."""
        validate_name(self.name)
        if self.method not in ("yapo", "bipo", "caa", "sas"):
            raise ValueError(f"unknown method {self.method!r}")
        if self.method in SAE_METHODS and not (self.sae or loaded):
            raise ValueError(f"--sae is required for method {self.method}")
        if self.method in ("bipo", "caa") and self.layer is None and not (self.sae or loaded):
            raise ValueError(f"--layer (or --sae, whose layer is used) is required for method {self.method}")
        if self.batch_size < 1 or self.beta <= 0 or self.lr <= 0:
            raise ValueError("batch_size, beta and lr must be positive")
        if self.retain_weight < 0 or self.retain_batch_size < 1 or (self.retain_margin or 0) < 0:
            raise ValueError("retain_weight and retain_margin must be >= 0 and retain_batch_size positive")


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

    def steps_to_loss(self, threshold: float = 0.1, window: int = 10) -> int | None:
        """First step at which the trailing mean loss over `window` steps is below `threshold`."""
        return steps_to_loss(self.losses, threshold, window)


def steps_to_loss(losses: Sequence[float], threshold: float = 0.1, window: int = 10) -> int | None:
    for i, v in enumerate(moving_average(list(losses), window)):
        if i + 1 >= min(window, len(losses)) and v < threshold:
            return i + 1
    return None


def lr_factor(step: int, total: int, warmup: int) -> float:
    """Linear warmup to 1 over `warmup` steps, then cosine decay to 0 at `total`."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def direction_for(seed: int, step: int) -> float:
    """d ∈ {+1, −1} for a step: a pure function of (seed, step), so resuming reproduces it."""
    return 1.0 if random.Random(seed * 1_000_003 + step).random() < 0.5 else -1.0


def batch_indices(seed: int, step: int, n: int, batch_size: int) -> list[int]:
    """Pair indices of a step: epoch-wise shuffles seeded by (seed, epoch); last batch may be short."""
    per_epoch = math.ceil(n / batch_size)
    epoch, pos = divmod(step, per_epoch)
    g = torch.Generator().manual_seed(seed * 7919 + epoch)
    perm = torch.randperm(n, generator=g).tolist()
    return perm[pos * batch_size : (pos + 1) * batch_size]


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


def _log_base(cfg: TrainConfig) -> Path | None:
    """Stem for the run's log / plot / checkpoint files (outside the catalog's vector files)."""
    if cfg.log_dir:
        root = Path(cfg.log_dir)
    elif cfg.out:
        root = Path(cfg.out).parent / "train-logs"
    else:
        return None
    return root / cfg.name


def _fingerprint(cfg: TrainConfig, data_hash: str, retain_hash: str | None, total: int) -> str:
    keys = (
        "method",
        "model",
        "sae",
        "beta",
        "lr",
        "batch_size",
        "weight_decay",
        "grad_clip",
        "seed",
        "l1",
        "reference_mode",
        "max_length",
        "overlong",
        "retain_weight",
        "retain_batch_size",
        "retain_margin",
    )
    return json.dumps(
        {**{k: getattr(cfg, k) for k in keys}, "data": data_hash, "retain": retain_hash, "total": total},
        sort_keys=True,
    )


def _row_cache(encoded: Sequence[EncodedPair]) -> list[tuple[tuple[int, ...], tuple[int, ...]]]:
    """Rows [chosen 0..N-1, rejected 0..N-1] once, so a step only indexes them."""
    return pair_rows(encoded)


def _batch_for(rows: list, idx: Sequence[int], n: int, device: torch.device) -> Any:
    chosen = [rows[i] for i in idx]
    rejected = [rows[n + i] for i in idx]
    return make_batch(chosen + rejected).to(device)


@torch.no_grad()
def reference_logprobs(
    res: Resources, encoded: Sequence[EncodedPair], batch_pairs: int = 16
) -> tuple[torch.Tensor, torch.Tensor]:
    """π_0 summed response log-probs (chosen, rejected) for every pair: the cached constants of the loss."""
    rows = _row_cache(encoded)
    n = len(encoded)
    out_w, out_l = [], []
    for start in range(0, n, batch_pairs):
        idx = list(range(start, min(n, start + batch_pairs)))
        logp = response_logprobs(res.model, _batch_for(rows, idx, n, res.device)).cpu()
        out_w.append(logp[: len(idx)])
        out_l.append(logp[len(idx) :])
    return torch.cat(out_w), torch.cat(out_l)


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
    n, m = len(encoded), len(retained)
    rows_total = n + m  # row i < n: a training pair; n <= i: a retention pair
    per_epoch = math.ceil(n / cfg.batch_size)
    total = cfg.max_steps if cfg.max_steps is not None else cfg.epochs * per_epoch
    warmup = cfg.warmup_steps if cfg.warmup_steps is not None else min(100, total // 10)
    data_hash = pairs_hash(pairs)
    retain_hash = pairs_hash(retain_pairs) if m else None
    fingerprint = _fingerprint(cfg, data_hash, retain_hash, total)
    base = _log_base(cfg)
    device = res.device

    if cfg.method == "yapo":
        steer: YapoSteer | BipoSteer = YapoSteer(
            res.coder, mode="reference" if cfg.reference_mode else "fast"
        )
    else:
        steer = BipoSteer(res.hidden_size, device=device)
    opt = torch.optim.AdamW([steer.v], lr=cfg.lr, betas=(0.9, 0.999), weight_decay=cfg.weight_decay)

    start, losses, history, seconds = 0, [], [], 0.0
    ref_w = ref_l = None
    ckpt = load_checkpoint(base) if (cfg.resume and base is not None) else None
    if ckpt is not None:
        if ckpt.fingerprint != fingerprint:
            raise ValueError(f"checkpoint {base}.ckpt was made by a different run (settings or data differ)")
        start, losses, history, seconds = (
            ckpt.step,
            list(ckpt.state["losses"]),
            list(ckpt.state["history"]),
            float(ckpt.state["seconds"]),
        )
        with torch.no_grad():
            steer.v.copy_(ckpt.tensors["v"])
        if start > 0:
            opt.load_state_dict(_adam_state(opt, ckpt))
        ref_w, ref_l = ckpt.tensors["ref_w"], ckpt.tensors["ref_l"]

    t0 = time.perf_counter()
    all_encoded = [*encoded, *retained]
    rows = _row_cache(all_encoded)
    cache = None
    if cfg.cache_activations and not cfg.reference_mode:
        coder = res.coder if cfg.method == "yapo" else None
        cache = LowerLayerCache(res.model, layer, rows, coder=coder)  # its forward also gives π_0
        if ref_w is None:
            ref_w, ref_l = cache.logprobs[:rows_total], cache.logprobs[rows_total:]
    if ref_w is None:
        ref_w, ref_l = (
            reference_logprobs(res, all_encoded)
            if not cfg.reference_mode
            else (torch.zeros(rows_total), torch.zeros(rows_total))
        )
    end = total if cfg.stop_after is None else min(total, cfg.stop_after)
    window: list[tuple[float, float, float]] = []
    bar = tqdm(
        total=total, initial=start, desc=f"{cfg.method} {cfg.name}", disable=not cfg.progress, leave=False
    )
    skip_lower = cache.active() if cache is not None else contextlib.nullcontext()
    with skip_lower, layer_hook(res.model, layer, steer):
        for step in range(start, end):
            idx = batch_indices(cfg.seed, step, n, cfg.batch_size)
            b = len(idx)
            if m:
                idx = idx + [n + i for i in batch_indices(cfg.seed + 1, step, m, cfg.retain_batch_size)]
            d = direction_for(cfg.seed, step)
            batch = _batch_for(rows, idx, rows_total, device)
            rows_in_batch = len(idx)
            if cache is not None:
                cache.assemble([*idx, *(rows_total + i for i in idx)], batch.input_ids.shape[1])
                if isinstance(steer, YapoSteer):
                    steer.codes = cache.current_codes
            if cfg.reference_mode:
                steer.direction = 0.0  # "multiplier 0": the reference code's π_0, recomputed every step
                with torch.no_grad():
                    ref = response_logprobs(res.model, batch).cpu()
                rw, rl = ref[:rows_in_batch], ref[rows_in_batch:]
            else:
                rw, rl = ref_w[idx], ref_l[idx]
            steer.direction = d
            logp = response_logprobs(res.model, batch)
            # rows: the b training pairs, then the retention pairs (chosen side, then rejected side)
            lw, ll = logp[:rows_in_batch], logp[rows_in_batch:]
            rw, rl = rw.to(logp), rl.to(logp)
            margin = preference_margin(lw[:b], ll[:b], rw[:b], rl[:b])
            loss = preference_loss(margin, d, cfg.beta)
            penalty = (
                retention_penalty(lw[b:], ll[b:], rw[b:], rl[b:], cfg.retain_margin)
                if m
                else loss.new_zeros(())
            )
            opt.zero_grad(set_to_none=True)
            (loss + cfg.retain_weight * penalty).backward()
            if cfg.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_([steer.v], cfg.grad_clip)
            lr = cfg.lr * lr_factor(step, total, warmup)
            for group in opt.param_groups:
                group["lr"] = lr
            opt.step()
            if cfg.l1 > 0:
                with torch.no_grad():
                    soft_threshold_(steer.v, lr * cfg.l1)
            losses.append(float(loss.detach()))
            window.append(
                (
                    float(loss.detach()),
                    float((d * margin.detach() > 0).float().mean()),
                    float(penalty.detach()),
                )
            )
            bar.update(1)
            done = step + 1
            if done % cfg.log_every == 0 or done == end:
                history.append(_metrics(done, window, steer, lr, seconds + time.perf_counter() - t0))
                bar.set_postfix(loss=f"{history[-1]['loss']:.3f}")
                window = []
                if base is not None:
                    _write_log(base, cfg, history, losses, stats)
            if base is not None and (done % cfg.checkpoint_every == 0 or done == end):
                save_checkpoint(
                    base,
                    _checkpoint(
                        done,
                        fingerprint,
                        steer,
                        opt,
                        ref_w,
                        ref_l,
                        losses,
                        history,
                        seconds + time.perf_counter() - t0,
                    ),
                )
    bar.close()
    elapsed = time.perf_counter() - t0
    seconds += elapsed
    trained_steps = end - start
    pps = trained_steps * cfg.batch_size / elapsed if trained_steps and elapsed > 0 else None
    log_path = None
    if base is not None:
        log_path = _write_log(base, cfg, history, losses, stats)
        plot_loss_curves({f"{cfg.method} {cfg.name}": losses}, log_path.with_suffix(".png"), title=cfg.name)
    if end < total:
        return TrainResult(
            None,
            None,
            end,
            losses[-1] if losses else None,
            losses,
            history,
            seconds,
            pps,
            stats.as_dict(),
            log_path,
            completed=False,
        )

    v = steer.vector()
    if cfg.method == "yapo":
        v = keep_top_k(v, cfg.top_k)
    final = float(sum(losses[-cfg.log_every :]) / max(1, len(losses[-cfg.log_every :]))) if losses else None
    training = _training_meta(cfg, data_hash, len(pairs), stats, layer) | {
        "steps": total,
        "warmup_steps": warmup,
        "final_loss": final,
        "steps_to_loss_0.1": steps_to_loss(losses, 0.1),
        "seconds": round(seconds, 2),
        "loss_curve": loss_curve(history),
    }
    if m:
        training["retain"] = {
            "data": Path(cfg.retain).name if cfg.retain else None,
            "data_hash": retain_hash,
            "pairs": m,
            "weight": cfg.retain_weight,
            "batch_size": cfg.retain_batch_size,
            "margin": cfg.retain_margin,
            "final_penalty": history[-1].get("retain_penalty") if history else None,
        }
    vector = _make_vector(cfg, res, layer, v, training)
    path = _save(cfg, vector)
    return TrainResult(vector, path, total, final, losses, history, seconds, pps, stats.as_dict(), log_path)


def loss_curve(history: Sequence[Mapping[str, Any]], max_points: int = 200) -> dict[str, list]:
    """The logged mean losses as `{"step": [...], "loss": [...]}` for the vector's metadata (the playground plots
    it), thinned to at most `max_points` so a long run keeps its file header small; the last point is kept."""
    points = [(int(h["step"]), round(float(h["loss"]), 5)) for h in history]
    if len(points) > max_points:
        stride = math.ceil(len(points) / max_points)
        points = [*points[::stride][: max_points - 1], points[-1]]
    return {"step": [s for s, _ in points], "loss": [v for _, v in points]}


def _adam_state(opt: torch.optim.Optimizer, ckpt: Checkpoint) -> dict[str, Any]:
    state = opt.state_dict()
    state["state"] = {
        0: {
            "step": torch.tensor(float(ckpt.state["adam_step"])),
            "exp_avg": ckpt.tensors["exp_avg"].clone(),
            "exp_avg_sq": ckpt.tensors["exp_avg_sq"].clone(),
        }
    }
    return state


def _checkpoint(
    step: int,
    fingerprint: str,
    steer: Any,
    opt: torch.optim.Optimizer,
    ref_w: torch.Tensor,
    ref_l: torch.Tensor,
    losses: list[float],
    history: list[dict],
    seconds: float,
) -> Checkpoint:
    st = opt.state.get(steer.v, {})
    zeros = torch.zeros_like(steer.v)
    return Checkpoint(
        step=step,
        fingerprint=fingerprint,
        tensors={
            "v": steer.v.detach().float(),
            "exp_avg": st.get("exp_avg", zeros).detach().float(),
            "exp_avg_sq": st.get("exp_avg_sq", zeros).detach().float(),
            "ref_w": ref_w.float(),
            "ref_l": ref_l.float(),
        },
        state={
            "adam_step": float(st["step"]) if "step" in st else 0.0,
            "losses": losses,
            "history": history,
            "seconds": seconds,
        },
    )


def _metrics(
    step: int, window: list[tuple[float, float, float]], steer: Any, lr: float, seconds: float
) -> dict[str, Any]:
    v = steer.v.detach()
    return {
        "step": step,
        "loss": sum(w[0] for w in window) / len(window),
        "pref_acc": sum(w[1] for w in window) / len(window),
        "retain_penalty": sum(w[2] for w in window) / len(window),
        "norm": float(v.norm()),
        "nnz": int(torch.count_nonzero(v)),
        "lr": lr,
        "seconds": round(seconds, 3),
    }


def _write_log(base: Path, cfg: TrainConfig, history: list, losses: list[float], stats: EncodeStats) -> Path:
    path = base.with_name(base.name + ".log.json")
    doc = {
        "config": _jsonable(asdict(cfg)),
        "encode": stats.as_dict(),
        "history": history,
        "losses": [round(x, 6) for x in losses],
    }
    write_atomic(path, json.dumps(doc, indent=1).encode())
    return path


def _jsonable(obj: Any) -> Any:
    return json.loads(json.dumps(obj, default=str))


def _training_meta(
    cfg: TrainConfig, data_hash: str, n_pairs: int, stats: EncodeStats, layer: int
) -> dict[str, Any]:
    hyper = {
        k: getattr(cfg, k)
        for k in (
            "beta",
            "lr",
            "epochs",
            "max_steps",
            "batch_size",
            "weight_decay",
            "grad_clip",
            "seed",
            "max_length",
            "top_k",
            "l1",
            "tau",
            "dtype",
        )
    }
    meta: dict[str, Any] = {
        "method": cfg.method,
        "data": Path(cfg.data).name if cfg.data else None,
        "data_hash": data_hash,
        "where": dict(cfg.where),
        "pairs": n_pairs,
        "encode": stats.as_dict(),
        "layer": layer,
        "hyperparameters": hyper,
        "reference_mode": cfg.reference_mode,
    }
    if cfg.target:
        meta["target"] = cfg.target
    return _jsonable(meta)


def _make_vector(
    cfg: TrainConfig, res: Resources, layer: int, v: torch.Tensor, training: dict
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
    rows = _row_cache(encoded)
    n = len(encoded)
    chosen, rejected = [], []
    for start in range(0, n, batch_pairs):
        idx = list(range(start, min(n, start + batch_pairs)))
        store: list[torch.Tensor] = []
        batch = _batch_for(rows, idx, n, res.device)
        with capture_last_token(res.model, layer, store):
            res.model(
                input_ids=batch.input_ids,
                attention_mask=batch.attention_mask,
                position_ids=batch.position_ids,
                use_cache=False,
            )
        h = store[0].cpu()
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
    training = _training_meta(cfg, pairs_hash(pairs), len(pairs), stats, layer) | {
        "position": "last token of prompt+response",
        "seconds": round(seconds, 2),
    }
    vector = _make_vector(cfg, res, layer, v, training)
    path = _save(cfg, vector)
    return TrainResult(
        vector, path, 0, None, [], [], seconds, len(encoded) / seconds if seconds else None, stats.as_dict()
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
