"""The YaPO / BiPO optimisation loop in three parts: `PreferenceRun.setup` (fresh or resumed from a checkpoint),
`PreferenceRun.step` (one optimiser step, testable alone) and `PreferenceRun.record` (metrics, log, checkpoint).

AdamW on a float32 vector (zero-init), cosine schedule with linear warmup, gradient clipping, one direction
d ∈ {+1, −1} per step, loss `−log σ(d·β·margin)` (+ the retention penalty on a few neutral facts); π_0
log-probs are computed once and cached (`reference_mode` recomputes them every step, like the reference code).
Batch order and d are pure functions of (seed, step), so a resumed run continues bit for bit.
"""

from __future__ import annotations

import contextlib
import json
import math
import random
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from trainer.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from trainer.config import TrainConfig
from trainer.data import PreferencePair, pairs_hash
from trainer.layer_cache import LowerLayerCache
from trainer.logprobs import make_batch, pair_rows, response_logprobs
from trainer.objectives import (
    BipoSteer,
    YapoSteer,
    preference_loss,
    preference_margin,
    soft_threshold_,
)
from trainer.resources import Resources
from trainer.retention import retention_penalty
from trainer.tokens import EncodedPair, EncodeStats
from vectors.hooks import layer_hook
from vectors.io import write_atomic

FINGERPRINT_KEYS = (
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
    "retain_strengths",
)


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


def batch_for(rows: list, idx: Sequence[int], n: int, device: torch.device) -> Any:
    """The batch of rows `idx` (chosen sides) and `n + idx` (their rejected sides)."""
    return make_batch([rows[i] for i in idx] + [rows[n + i] for i in idx]).to(device)


@torch.no_grad()
def reference_logprobs(
    res: Resources, encoded: Sequence[EncodedPair], batch_pairs: int = 16
) -> tuple[torch.Tensor, torch.Tensor]:
    """π_0 summed response log-probs (chosen, rejected) for every pair: the cached constants of the loss."""
    rows = pair_rows(encoded)
    n = len(encoded)
    out_w, out_l = [], []
    for start in range(0, n, batch_pairs):
        idx = list(range(start, min(n, start + batch_pairs)))
        logp = response_logprobs(res.model, batch_for(rows, idx, n, res.device)).cpu()
        out_w.append(logp[: len(idx)])
        out_l.append(logp[len(idx) :])
    return torch.cat(out_w), torch.cat(out_l)


def log_base(cfg: TrainConfig) -> Path | None:
    """Stem for the run's log / plot / checkpoint files (outside the catalog's vector files)."""
    if cfg.log_dir:
        root = Path(cfg.log_dir)
    elif cfg.out:
        root = Path(cfg.out).parent / "train-logs"
    else:
        return None
    return root / cfg.name


@dataclass(frozen=True)
class StepStats:
    """One optimiser step: preference loss, share of the batch ranked the step's way, retention penalty, lr."""

    step: int
    loss: float
    ranked: float
    penalty: float
    lr: float


@dataclass
class PreferenceRun:
    """A YaPO / BiPO run: the vector and its optimiser, the cached rows and π_0 log-probs, the history so far.

    Rows `i < n` are training pairs, `n <= i < n + m` retention pairs (chosen sides; rejected at `n + m + i`)."""

    cfg: TrainConfig
    res: Resources
    layer: int
    steer: YapoSteer | BipoSteer
    opt: torch.optim.Optimizer
    rows: list
    n: int
    m: int
    total: int
    warmup: int
    fingerprint: str
    data_hash: str
    retain_hash: str | None
    ref_w: torch.Tensor
    ref_l: torch.Tensor
    cache: LowerLayerCache | None
    encode_stats: EncodeStats
    base: Path | None
    start: int = 0
    losses: list[float] = field(default_factory=list)
    history: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0  # training time before this process (a resumed run's earlier part)
    _window: list[StepStats] = field(default_factory=list)

    @classmethod
    def setup(
        cls,
        cfg: TrainConfig,
        res: Resources,
        layer: int,
        pairs: Sequence[PreferencePair],
        encoded: Sequence[EncodedPair],
        stats: EncodeStats,
        retained: Sequence[EncodedPair] = (),
        retain_pairs: Sequence[PreferencePair] = (),
    ) -> PreferenceRun:
        """A fresh run, or the checkpointed one when `cfg.resume` finds a checkpoint of the same settings and data."""
        n, m = len(encoded), len(retained)
        total = cfg.max_steps if cfg.max_steps is not None else cfg.epochs * math.ceil(n / cfg.batch_size)
        warmup = cfg.warmup_steps if cfg.warmup_steps is not None else min(100, total // 10)
        data_hash = pairs_hash(pairs)
        retain_hash = pairs_hash(retain_pairs) if m else None
        fingerprint = json.dumps(
            {
                **{k: getattr(cfg, k) for k in FINGERPRINT_KEYS},
                "data": data_hash,
                "retain": retain_hash,
                "total": total,
            },
            sort_keys=True,
        )
        if cfg.method == "yapo":
            steer: YapoSteer | BipoSteer = YapoSteer(
                res.coder, mode="reference" if cfg.reference_mode else "fast"
            )
        else:
            steer = BipoSteer(res.hidden_size, device=res.device)
        opt = torch.optim.AdamW([steer.v], lr=cfg.lr, betas=(0.9, 0.999), weight_decay=cfg.weight_decay)
        rows = pair_rows([*encoded, *retained])
        base = log_base(cfg)
        cache = None
        if cfg.cache_activations and not cfg.reference_mode:
            coder = res.coder if cfg.method == "yapo" else None
            cache = LowerLayerCache(res.model, layer, rows, coder=coder)  # its forward also gives π_0
        run = cls(
            cfg=cfg,
            res=res,
            layer=layer,
            steer=steer,
            opt=opt,
            rows=rows,
            n=n,
            m=m,
            total=total,
            warmup=warmup,
            fingerprint=fingerprint,
            data_hash=data_hash,
            retain_hash=retain_hash,
            ref_w=torch.zeros(n + m),
            ref_l=torch.zeros(n + m),
            cache=cache,
            encode_stats=stats,
            base=base,
        )
        ckpt = load_checkpoint(base) if (cfg.resume and base is not None) else None
        if ckpt is not None:
            run._resume(ckpt)
        elif cache is not None:
            run.ref_w, run.ref_l = cache.logprobs[: n + m], cache.logprobs[n + m :]
        elif not cfg.reference_mode:
            run.ref_w, run.ref_l = reference_logprobs(res, [*encoded, *retained])
        return run

    def _resume(self, ckpt: Checkpoint) -> None:
        if ckpt.fingerprint != self.fingerprint:
            raise ValueError(
                f"checkpoint {self.base}.ckpt was made by a different run (settings or data differ)"
            )
        self.start = ckpt.step
        self.losses = list(ckpt.state["losses"])
        self.history = list(ckpt.state["history"])
        self.seconds = float(ckpt.state["seconds"])
        with torch.no_grad():
            self.steer.v.copy_(ckpt.tensors["v"])
        if self.start > 0:
            state = self.opt.state_dict()
            state["state"] = {
                0: {
                    "step": torch.tensor(float(ckpt.state["adam_step"])),
                    "exp_avg": ckpt.tensors["exp_avg"].clone(),
                    "exp_avg_sq": ckpt.tensors["exp_avg_sq"].clone(),
                }
            }
            self.opt.load_state_dict(state)
        self.ref_w, self.ref_l = ckpt.tensors["ref_w"], ckpt.tensors["ref_l"]

    @contextlib.contextmanager
    def hooks(self) -> Iterator[None]:
        """The steering hook at the vector's layer (and the lower-layer cache's skip), for `step` to run in."""
        skip_lower = self.cache.active() if self.cache is not None else contextlib.nullcontext()
        with skip_lower, layer_hook(self.res.model, self.layer, self.steer):
            yield

    def step(self, step: int) -> StepStats:
        """One optimiser step (inside `hooks()`): the preference loss of the step's batch and direction, plus
        the retention penalty on the step's retention pairs."""
        cfg, n, m = self.cfg, self.n, self.m
        idx = batch_indices(cfg.seed, step, n, cfg.batch_size)
        b = len(idx)
        if m:
            idx = idx + [n + i for i in batch_indices(cfg.seed + 1, step, m, cfg.retain_batch_size)]
        d = direction_for(cfg.seed, step)
        batch = batch_for(self.rows, idx, n + m, self.res.device)
        if self.cache is not None:
            self.cache.assemble([*idx, *(n + m + i for i in idx)], batch.input_ids.shape[1])
            if isinstance(self.steer, YapoSteer):
                self.steer.codes = self.cache.current_codes
        if cfg.reference_mode:
            self.steer.direction = 0.0  # "multiplier 0": the reference code's π_0, recomputed every step
            with torch.no_grad():
                ref = response_logprobs(self.res.model, batch).cpu()
            rw, rl = ref[: len(idx)], ref[len(idx) :]
        else:
            rw, rl = self.ref_w[idx], self.ref_l[idx]
        self.steer.direction = d
        logp = response_logprobs(self.res.model, batch)
        # rows: the b training pairs, then the retention pairs (chosen side, then rejected side)
        lw, ll = logp[: len(idx)], logp[len(idx) :]
        rw, rl = rw.to(logp), rl.to(logp)
        margin = preference_margin(lw[:b], ll[:b], rw[:b], rl[:b])
        loss = preference_loss(margin, d, cfg.beta)
        penalty = (
            retention_penalty(lw[b:], ll[b:], rw[b:], rl[b:], cfg.retain_margin) if m else loss.new_zeros(())
        )
        self.opt.zero_grad(set_to_none=True)
        (loss + cfg.retain_weight * penalty).backward()
        if m and cfg.retain_strengths:
            penalty = penalty.detach() + self._retain_at(idx[b:], d)
        if cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_([self.steer.v], cfg.grad_clip)
        lr = cfg.lr * lr_factor(step, self.total, self.warmup)
        for group in self.opt.param_groups:
            group["lr"] = lr
        self.opt.step()
        if cfg.l1 > 0:
            with torch.no_grad():
                soft_threshold_(self.steer.v, lr * cfg.l1)
        ranked = float((d * margin.detach() > 0).float().mean())
        return StepStats(step, float(loss.detach()), ranked, float(penalty.detach()), lr)

    def _retain_at(self, rows: list[int], d: float) -> torch.Tensor:
        """The retention penalty of the step's retention rows at each of `retain_strengths` (direction d), its
        gradient added to the step's; returns the summed penalty."""
        cfg, total = self.cfg, self.n + self.m
        batch = batch_for(self.rows, rows, total, self.res.device)
        rw, rl = self.ref_w[rows], self.ref_l[rows]
        out = torch.zeros(())
        for s in cfg.retain_strengths:
            if self.cache is not None:
                self.cache.assemble([*rows, *(total + i for i in rows)], batch.input_ids.shape[1])
                if isinstance(self.steer, YapoSteer):
                    self.steer.codes = self.cache.current_codes
            self.steer.direction = d * s
            logp = response_logprobs(self.res.model, batch)
            k = len(rows)
            penalty = retention_penalty(logp[:k], logp[k:], rw.to(logp), rl.to(logp), cfg.retain_margin)
            (cfg.retain_weight * penalty).backward()
            out = out + penalty.detach().cpu()
        self.steer.direction = d
        return out

    def record(self, stats: StepStats, end: int, elapsed: float) -> None:
        """Bookkeeping after a step: the loss, every `log_every` steps a history entry and the log file, every
        `checkpoint_every` steps (and at `end`) a checkpoint. `elapsed`: seconds trained in this process."""
        cfg = self.cfg
        self.losses.append(stats.loss)
        self._window.append(stats)
        done = stats.step + 1
        if done % cfg.log_every == 0 or done == end:
            w = self._window
            v = self.steer.v.detach()
            self.history.append(
                {
                    "step": done,
                    "loss": sum(s.loss for s in w) / len(w),
                    "pref_acc": sum(s.ranked for s in w) / len(w),
                    "retain_penalty": sum(s.penalty for s in w) / len(w),
                    "norm": float(v.norm()),
                    "nnz": int(torch.count_nonzero(v)),
                    "lr": stats.lr,
                    "seconds": round(self.seconds + elapsed, 3),
                }
            )
            self._window = []
            self.write_log()
        if self.base is not None and (done % cfg.checkpoint_every == 0 or done == end):
            save_checkpoint(self.base, self._checkpoint(done, self.seconds + elapsed))

    def write_log(self) -> Path | None:
        """`<log_dir>/<name>.log.json`: the config, encoding stats, history and every loss."""
        if self.base is None:
            return None
        path = self.base.with_name(self.base.name + ".log.json")
        doc = {
            "config": json.loads(json.dumps(asdict(self.cfg), default=str)),
            "encode": self.encode_stats.as_dict(),
            "history": self.history,
            "losses": [round(x, 6) for x in self.losses],
        }
        write_atomic(path, json.dumps(doc, indent=1).encode())
        return path

    def _checkpoint(self, step: int, seconds: float) -> Checkpoint:
        v = self.steer.v
        st = self.opt.state.get(v, {})
        zeros = torch.zeros_like(v)
        return Checkpoint(
            step=step,
            fingerprint=self.fingerprint,
            tensors={
                "v": v.detach().float(),
                "exp_avg": st.get("exp_avg", zeros).detach().float(),
                "exp_avg_sq": st.get("exp_avg_sq", zeros).detach().float(),
                "ref_w": self.ref_w.float(),
                "ref_l": self.ref_l.float(),
            },
            state={
                "adam_step": float(st["step"]) if "step" in st else 0.0,
                "losses": self.losses,
                "history": self.history,
                "seconds": seconds,
            },
        )

    def train(self, end: int, *, progress: bool = False) -> float:
        """Steps `start .. end - 1` with bookkeeping; returns the seconds they took."""
        from tqdm.auto import tqdm

        bar = tqdm(
            total=self.total,
            initial=self.start,
            desc=f"{self.cfg.method} {self.cfg.name}",
            disable=not progress,
            leave=False,
        )
        t0 = time.perf_counter()
        with self.hooks():
            for step in range(self.start, end):
                self.record(self.step(step), end, time.perf_counter() - t0)
                bar.update(1)
                if self.history and (step + 1) % self.cfg.log_every == 0:
                    bar.set_postfix(loss=f"{self.history[-1]['loss']:.3f}")
        bar.close()
        return time.perf_counter() - t0


__all__ = [
    "PreferenceRun",
    "StepStats",
    "batch_for",
    "batch_indices",
    "direction_for",
    "log_base",
    "lr_factor",
    "reference_logprobs",
]
