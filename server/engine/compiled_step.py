"""The compiled decode step (engine v2, part 2): the decode forward compiled once, checked against eager per bucket.

A decode step over slots [0, n) runs in the smallest verified bucket b ≥ n (1, 2, 4, 8, … up to `max_batch`);
slots [n, b) are free (their steering cleared, position 0) and their outputs are dropped. The slot cache, the
steering buffers, ids and positions are the runner's preallocated tensors, so joins, leaves, steering configs and
sampling parameters change buffer contents only and never recompile.
On CPU the step is `torch.compile` (inductor) with two dynamic dimensions, the batch and the number of key
positions read (the longest live row's context rounded up to `KV_BLOCK`, not `max_context`): ONE graph serves every
bucket and context length (a lone row runs with a free slot beside it, since a size-1 batch would be specialised
into a graph of its own), so a cold start compiles once. On CUDA `mode="reduce-overhead"` captures one CUDA graph
per bucket with static shapes (attention reads all `max_context` keys).

Every bucket is verified at start-up: a probe batch with mixed steering (YaPO with negative features, dense,
unsteered) decodes a few steps eagerly and then compiled from the same state, fed the same tokens; logits must
agree within the dtype's tolerance and greedy tokens must match (except at near-ties). A compile error, capture
error or mismatch leaves that bucket on the eager path, with one log line saying why; `status` says which path
each bucket takes, for `/ready` and `/metrics`.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import torch

from server.engine.runner_io import NewRow, StepOutput
from server.engine.sampling import SamplingParams
from server.engine.slot_cache import SlotCache
from vectors.slots import LayerRow, SlotSteering

log = logging.getLogger(__name__)

EngineMode = Literal["auto", "compiled", "eager"]
PROBE_STEPS = 4
# max |Δ logit| allowed between the compiled and the eager step, relative to max(1, max |logit|)
TOLERANCE = {torch.float32: 1e-3, torch.float16: 2e-2, torch.bfloat16: 6e-2}


class DecodeRunner(Protocol):
    """What the compiled step reads of its runner (`server.engine.runner.ModelRunner`): its preallocated
    buffers, its eager step (the reference) and its prefill (the probe)."""

    model: Any
    device: torch.device
    dtype: torch.dtype
    slots: int
    max_context: int
    max_neg: int
    cache: SlotCache
    steering: SlotSteering
    next_ids: torch.Tensor
    positions: torch.Tensor
    key_positions: torch.Tensor

    def buffers(self) -> list[torch.Tensor]: ...
    def free(self, slot: int) -> None: ...
    def prefill(self, start: int, rows: Sequence[NewRow]) -> StepOutput: ...
    def kv_len(self, start: int, n: int) -> int: ...
    def eager_logits(self, start: int, n: int) -> torch.Tensor: ...
    def graph_step(self, ids: torch.Tensor, positions: torch.Tensor, keys: torch.Tensor) -> torch.Tensor: ...


class CompileFailed(RuntimeError):
    """STEER_ENGINE=compiled, but a bucket did not compile or did not match the eager step."""


@dataclass
class EngineStatus:
    """Which path decode steps take, and why (reported by `/ready` and `/metrics`)."""

    requested: EngineMode
    mode: Literal["compiled", "eager", "partly compiled"] = "eager"
    reason: str | None = None
    buckets: dict[int, str] = field(default_factory=dict)  # bucket -> "compiled" or "eager: <why>"
    compile_s: float = 0.0


def buckets_for(max_batch: int) -> list[int]:
    """1, 2, 4, … below `max_batch`, and `max_batch` itself."""
    out, b = [], 1
    while b < max_batch:
        out.append(b)
        b *= 2
    return [*out, max_batch]


def set_compile_cache(path: str | None) -> None:
    """Point inductor's on-disk cache at `path` (a writable, exec-allowed folder; reused across restarts)."""
    if path:
        os.makedirs(path, exist_ok=True)
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = path


class CompiledDecode:
    """The compiled decode step of one runner, per bucket; `step(n)` is None where a bucket runs eagerly."""

    def __init__(self, runner: DecodeRunner, backend: str = "inductor") -> None:
        self.runner = runner
        self.backend = backend
        self.cuda = runner.device.type == "cuda"
        self.ok: list[int] = []
        # CPU: every step runs at least 2 rows (a free slot fills in for a lone row), so that one graph with a
        # dynamic batch serves every bucket: a size-1 dimension would be specialised into a second graph
        self.min_rows = 2 if not self.cuda and runner.slots >= 2 else 1
        self._fn: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor] | None = None

    # --- use ----------------------------------------------------------------------------------------------
    def bucket(self, n: int) -> int | None:
        """The smallest verified bucket that holds n rows (None: run eagerly)."""
        return next((b for b in self.ok if b >= n), None)

    def logits(self, b: int) -> torch.Tensor:
        """Last-position logits [b, V] of one decode step over slots [0, b) in bucket b's graph."""
        assert self._fn is not None
        r = self.runner
        m = max(b, self.min_rows)
        ids, positions = r.next_ids[:m].unsqueeze(1), r.positions[:m].unsqueeze(1)
        r.steering.select(0, m, "generation")
        if self.cuda:  # one static shape per CUDA graph: every key position
            return self._fn(ids, positions, r.key_positions).clone()  # a replay overwrites its outputs
        # CPU: one graph for every batch and every context length (dynamic dimensions)
        keys = r.key_positions[: r.kv_len(0, m)]
        torch._dynamo.maybe_mark_dynamic(keys, 0)
        if m > 1:
            torch._dynamo.maybe_mark_dynamic(ids, 0)
            torch._dynamo.maybe_mark_dynamic(positions, 0)
        return self._fn(ids, positions, keys)[:b]

    # --- start-up -----------------------------------------------------------------------------------------
    def prepare(
        self,
        requested: EngineMode,
        buckets: list[int] | None = None,
        say: Callable[[str], None] = log.info,
    ) -> EngineStatus:
        """Compile and verify every bucket (largest first: CUDA graphs share the largest one's pool)."""
        status = EngineStatus(requested=requested)
        r = self.runner
        sizes = sorted({b for b in (buckets or buckets_for(r.slots)) if b <= r.slots})
        if requested == "eager":
            status.reason = "STEER_ENGINE=eager"
            status.buckets = dict.fromkeys(sizes, "eager: STEER_ENGINE=eager")
            return status
        if self.cuda:
            for t in r.buffers():
                torch._dynamo.mark_static_address(t)
        limit = max(torch._dynamo.config.cache_size_limit, len(sizes) + 2)
        torch._dynamo.config.cache_size_limit = limit
        mode = "reduce-overhead" if self.cuda else None
        dynamic = False if self.cuda else None  # CPU: only the dimensions marked in `logits` are dynamic
        self._fn = torch.compile(r.graph_step, dynamic=dynamic, mode=mode, backend=self.backend)
        t_all = time.perf_counter()
        for b in sorted(sizes, reverse=True):
            t0 = time.perf_counter()
            try:
                problem = self.self_check(b)
            except Exception as exc:  # compile or capture error
                problem = f"compile failed: {type(exc).__name__}: {str(exc).splitlines()[0][:300]}"
            finally:
                for slot in range(b):
                    r.free(slot)
            seconds = time.perf_counter() - t0
            if problem is None:
                self.ok.append(b)
                status.buckets[b] = "compiled"
                say(f"engine: bucket {b} compiled and verified against eager in {seconds:.1f} s")
            else:
                status.buckets[b] = f"eager: {problem}"
                say(f"engine: bucket {b} falls back to eager ({problem})")
        self.ok.sort()
        status.compile_s = round(time.perf_counter() - t_all, 2)
        failed = {b: why for b, why in status.buckets.items() if why != "compiled"}
        if not failed:
            status.mode = "compiled"
        elif len(failed) < len(status.buckets):
            status.mode = "partly compiled"
            status.reason = "; ".join(f"bucket {b}: {why}" for b, why in sorted(failed.items()))
        else:
            status.mode = "eager"
            status.reason = "; ".join(f"bucket {b}: {why}" for b, why in sorted(failed.items()))
        if failed and requested == "compiled":
            raise CompileFailed(f"STEER_ENGINE=compiled, but {status.reason}")
        return status

    def self_check(self, b: int) -> str | None:
        """Eager vs compiled on a probe batch of b rows with mixed steering; None when they agree."""
        r = self.runner
        r.prefill(0, probe_rows(r, b))
        start_ids, start_pos = r.next_ids[:b].clone(), r.positions[:b].clone()
        eager, fed = [], []
        with torch.inference_mode():
            for _ in range(PROBE_STEPS):
                logits = r.eager_logits(0, b).float()
                eager.append(logits)
                fed.append(logits.argmax(dim=-1))
                r.next_ids[:b], r.positions[:b] = fed[-1], r.positions[:b] + 1
            r.next_ids[:b], r.positions[:b] = start_ids, start_pos
            tol = TOLERANCE.get(r.dtype, 6e-2)
            for step in range(PROBE_STEPS):
                got = self.logits(b).float()
                want = eager[step]
                scale = max(1.0, float(want.abs().max()))
                diff = float((got - want).abs().max())
                if not diff <= tol * scale:  # also catches NaN
                    return (
                        f"logits differ from eager by {diff:.3g} at step {step} (tolerance {tol * scale:.3g})"
                    )
                top2 = want.topk(2, dim=-1).values
                near_tie = (top2[:, 0] - top2[:, 1]) <= 2 * tol * scale
                if bool(((got.argmax(dim=-1) != fed[step]) & ~near_tie).any()):
                    return f"greedy tokens differ from eager at step {step}"
                r.next_ids[:b], r.positions[:b] = fed[step], r.positions[:b] + 1
        return None


def probe_rows(runner: DecodeRunner, b: int) -> list[NewRow]:
    """b probe rows: YaPO-like rows with negative features at each SAE layer, a dense row, unsteered rows."""
    g = torch.Generator().manual_seed(1234)
    d_model = runner.steering.d_model
    vocab = int(runner.model.get_output_embeddings().weight.shape[0])
    kinds: list[dict[int, LayerRow]] = [{}]
    sparse: dict[int, LayerRow] = {}
    for layer, coder in runner.steering.coders.items():
        k = min(runner.max_neg, coder.d_sae, 16)
        if k == 0 or layer not in runner.steering.layers:
            continue
        idx = torch.randperm(coder.d_sae, generator=g)[:k]
        sparse[layer] = LayerRow(
            dense=torch.randn(d_model, generator=g, dtype=torch.float64),
            code_delta=torch.randn(d_model, generator=g, dtype=torch.float64) if coder.normalizes else None,
            neg_idx=idx,
            neg_val=-2.0 * torch.rand(k, generator=g, dtype=torch.float64),
            phase="both",
        )
    if sparse:
        kinds.append(sparse)
    layer = min(runner.steering.layers)
    empty = torch.zeros(0, dtype=torch.int64)
    kinds.append(
        {
            layer: LayerRow(
                torch.randn(d_model, generator=g, dtype=torch.float64), None, empty, empty.double(), "both"
            )
        }
    )
    rows = []
    for i in range(b):
        prompt = torch.randint(0, vocab, (3 + i % 5,), generator=g).tolist()
        rows.append(
            NewRow(
                prompt, SamplingParams(max_new_tokens=PROBE_STEPS + 1), seed=i, steering=kinds[i % len(kinds)]
            )
        )
    return rows
