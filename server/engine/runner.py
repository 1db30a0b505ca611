"""The model runner: every tensor of the engine, and nothing else (no text, no requests, no threads).

It owns the slot KV cache, the per-slot steering buffers (hooks installed once, at load), the per-slot sampling
parameters and the next input id / position of every slot, all allocated at start-up. `prefill` runs new rows'
prompts into consecutive free slots, `decode` runs one step for consecutive running slots; both return the
sampled ids (one device→host copy) and the log-probs that were asked for. `move` compacts (one slot), `free`
clears a slot. The scheduler decides which slots; the runner never looks at a row's state.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import torch

from server.engine.compiled_step import CompiledDecode, EngineMode, EngineStatus
from server.engine.logprobs import TokenLogprob, chosen_logprobs, prompt_logprobs
from server.engine.runner_io import NewRow, StepOutput
from server.engine.sampling import Sampler, SamplingParams
from server.engine.slot_cache import CacheShape, SlotCache, attention_masks
from vectors.hooks import text_config
from vectors.slots import Phase, SlotSteering

log = logging.getLogger(__name__)

KV_BLOCK = 64  # a decode step reads keys up to the longest row, rounded up to this


class CacheTooLarge(RuntimeError):
    """The KV cache for max_batch × max_context does not fit in memory."""


class ModelRunner:
    """Tensors of `slots` rows: cache, steering, sampling, inputs. Single-threaded (the engine thread)."""

    def __init__(
        self,
        model: Any,
        coders: Mapping[int, Any],
        *,
        slots: int,
        max_context: int,
        max_neg: int,
    ) -> None:
        self.model = model
        param = next(model.parameters())
        self.device, self.dtype = param.device, param.dtype
        cfg = text_config(model)
        self.slots, self.max_context, self.max_neg = slots, max_context, max_neg
        self.shape = CacheShape.of(cfg, slots, max_context, self.dtype)
        check_fits(self.shape, self.device)
        self.cache = SlotCache(self.shape, self.device)
        self.steering = SlotSteering(model, coders, slots, max_neg=max_neg)
        self.sampler = Sampler(slots, self.device)
        self.next_ids = torch.zeros(slots, dtype=torch.long, device=self.device)
        self.positions = torch.zeros(slots, dtype=torch.long, device=self.device)
        self.key_positions = torch.arange(max_context, device=self.device)  # a step reads a prefix of these
        self.lengths = [0] * slots  # host copy of `positions`: how many tokens each slot's cache holds
        self._params: list[SamplingParams | None] = [None] * slots
        layer_types = list(getattr(cfg, "layer_types", None) or [])
        window = getattr(cfg, "sliding_window", None)
        self.sliding_window: int | None = (
            int(window) if window and "sliding_attention" in layer_types else None
        )
        params = inspect.signature(model.forward).parameters
        self._cache_kwarg = "cache" if "cache" in params else "past_key_values"
        self.compiled: CompiledDecode | None = None
        self.status = EngineStatus(requested="eager", reason="not compiled")

    def close(self) -> None:
        """Remove the steering hooks (a new runner takes over the model)."""
        self.steering.close()

    @property
    def cache_bytes(self) -> int:
        return self.shape.bytes

    def buffers(self) -> list[torch.Tensor]:
        """Every tensor allocated at start-up (their addresses never change)."""
        own = [self.next_ids, self.positions, self.key_positions]
        return self.cache.buffers() + self.steering.buffers() + self.sampler.buffers() + own

    # --- slots --------------------------------------------------------------------------------------------
    def free(self, slot: int) -> None:
        self.steering.clear(slot)
        self._params[slot] = None
        self.lengths[slot] = 0
        self.positions[slot] = 0  # a free slot inside a compiled bucket attends to position 0 only
        self.next_ids[slot] = 0

    def move(self, src: int, dst: int) -> None:
        """Move the row in `src` to `dst` (its cache, steering, sampling state, inputs) and free `src`."""
        self.cache.move(src, dst)
        self.steering.move(src, dst)
        self.sampler.move(src, dst)
        for t in (self.next_ids, self.positions):
            t[dst] = t[src]
        self._params[dst], self.lengths[dst] = self._params[src], self.lengths[src]
        self.free(src)

    # --- forwards -----------------------------------------------------------------------------------------
    @torch.inference_mode()
    def prefill(self, start: int, rows: Sequence[NewRow]) -> StepOutput:
        """Write `rows` into slots [start, start + m), run their prompts (right-padded), sample first tokens."""
        m = len(rows)
        if start + m > self.slots:
            raise ValueError(f"slots [{start}, {start + m}) exceed the {self.slots} slots")
        lengths = [len(r.prompt_ids) for r in rows]
        width = max(lengths)
        if width > self.max_context:
            raise ValueError(f"a prompt of {width} tokens exceeds max_context {self.max_context}")
        for i, row in enumerate(rows):
            slot = start + i
            self.steering.write(slot, row.steering)
            self.sampler.set(slot, row.sampling, row.seed)
            self._params[slot] = row.sampling
        ids = torch.zeros(m, width, dtype=torch.long)
        for i, row in enumerate(rows):
            ids[i, : lengths[i]] = torch.tensor(list(row.prompt_ids), dtype=torch.long)
        positions = torch.arange(width, device=self.device).expand(m, width)
        wants_prompt = [r.sampling.prompt_logprobs is not None for r in rows]
        last = torch.tensor(lengths, device=self.device) - 1
        ids = ids.to(self.device)
        rows_m = torch.arange(m, device=self.device)
        if any(wants_prompt):
            logits = self._forward(ids, positions, start, width, "prompt", 0)
            final = logits[rows_m, last]
        elif (head := self._head()) is not None:  # only each row's last position goes through the lm_head
            with _head_input(head, rows_m, last):
                logits = self._forward(ids, positions, start, width, "prompt", 0)
            if logits.shape[1] != 1:
                raise RuntimeError(
                    "the lm_head hook did not see the head's input (is it the output embeddings?)"
                )
            final = logits[:, 0]
        else:  # a model without a known head: the distinct last positions of every row
            uniq = sorted(set(lengths))
            keep = torch.tensor([n - 1 for n in uniq], device=self.device)
            pick = torch.tensor([uniq.index(n) for n in lengths], device=self.device)
            logits = self._forward(ids, positions, start, width, "prompt", keep)
            final = logits[rows_m, pick]
        out = self._sample(final, start)
        for i, n in enumerate(lengths):
            self.lengths[start + i] = n
        self.positions[start : start + m] = torch.tensor(lengths, device=self.device)
        prompt_lp: list[list[TokenLogprob | None] | None] = []
        for i, row in enumerate(rows):
            top = row.sampling.prompt_logprobs
            prompt_lp.append(
                None if top is None else prompt_logprobs(logits[i, : lengths[i]], list(row.prompt_ids), top)
            )
        return StepOutput(out.tokens, out.logprobs, prompt_lp)

    @torch.inference_mode()
    def decode(self, start: int, n: int) -> StepOutput:
        """One decode step for slots [start, start + n): feed each its last sampled id at its next position.

        Runs in the compiled graph of the smallest verified bucket when the step covers slots from 0
        (`server.engine.compiled_step`), eagerly otherwise (a row retried alone, a bucket that failed its self-check).
        """
        rows = slice(start, start + n)
        if max(self.lengths[rows]) + 1 > self.max_context:
            raise ValueError(f"a row would exceed max_context {self.max_context}")
        compiled, bucket = self.compiled, None
        if compiled is not None and start == 0 and not self.steering.needs_full_encode(0, n):
            bucket = compiled.bucket(n)
        if compiled is not None and bucket is not None:
            logits = compiled.logits(bucket)[:n]
        else:
            logits = self.eager_logits(start, n)
        out = self._sample(logits, start)
        self.positions[rows] += 1
        for slot in range(start, start + n):
            self.lengths[slot] += 1
        return out

    def _head(self) -> torch.nn.Module | None:
        """The model's lm_head as it is now (packing replaces modules after the runner is built)."""
        get = getattr(self.model, "get_output_embeddings", None)
        head = get() if get is not None else None
        return head if isinstance(head, torch.nn.Module) else None

    def kv_len(self, start: int, n: int) -> int:
        """Key positions a decode step over slots [start, start + n) reads: the longest row's, rounded up."""
        longest = max(self.lengths[start : start + n]) + 1
        return min(self.max_context, -(-longest // KV_BLOCK) * KV_BLOCK)

    def eager_logits(self, start: int, n: int) -> torch.Tensor:
        """Last-position logits [n, V] of an eager decode step (keys read up to the longest row, rounded up)."""
        rows = slice(start, start + n)
        positions = self.positions[rows].unsqueeze(1)
        logits = self._forward(
            self.next_ids[rows].unsqueeze(1), positions, start, self.kv_len(start, n), "generation", 1
        )
        return logits[:, -1]

    def graph_step(self, ids: torch.Tensor, positions: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
        """The decode forward that `server.engine.compiled_step` compiles: slots [0, b) reading the key positions
        `keys` (a prefix of `key_positions`; its length may be a dynamic dimension), no host sync."""
        kv_len = keys.shape[0]
        self.cache.bind(0, positions, kv_len)
        return self._model(ids, positions, kv_len, 1)[:, -1]

    def compile(
        self, requested: EngineMode, backend: str = "inductor", buckets: list[int] | None = None
    ) -> EngineStatus:
        """Compile and verify the decode step per bucket (`server.engine.compiled_step`); eager where that fails."""
        compiled = CompiledDecode(self, backend=backend)
        self.status = compiled.prepare(requested, buckets)
        self.compiled = compiled if compiled.ok else None
        return self.status

    def _forward(
        self,
        ids: torch.Tensor,
        positions: torch.Tensor,
        start: int,
        kv_len: int,
        phase: Phase,
        keep: int | torch.Tensor,
    ) -> torch.Tensor:
        self.cache.bind(start, positions, kv_len)
        self.steering.select(start, ids.shape[0], phase)
        return self._model(ids, positions, kv_len, keep)

    def _model(
        self, ids: torch.Tensor, positions: torch.Tensor, kv_len: int, keep: int | torch.Tensor
    ) -> torch.Tensor:
        """The model's forward over the bound slots, with masks built from the positions."""
        full, sliding = attention_masks(positions, kv_len, self.dtype, self.sliding_window)
        mask: Any = full if sliding is None else {"full_attention": full, "sliding_attention": sliding}
        out = self.model(
            input_ids=ids,
            attention_mask=mask,
            position_ids=positions,
            use_cache=True,
            logits_to_keep=keep,
            **{self._cache_kwarg: self.cache},
        )
        logits: torch.Tensor = out.logits
        return logits

    def _sample(self, logits: torch.Tensor, start: int) -> StepOutput:
        """Choose each row's next id, remember it as the row's next input; one host copy of the ids.

        Work over the vocabulary beyond the argmax runs only for the rows that need it: sampling noise (and the
        top-k / top-p sort) for sampling rows, the log-softmax for rows that asked for log-probs.
        """
        n = logits.shape[0]
        params = self._params[start : start + n]
        sampled = [i for i, p in enumerate(params) if p is not None and not p.greedy]
        filtered = any(p.filters for p in params if p is not None)
        chosen = self.sampler.sample(logits, start, sampled=sampled, filtered=filtered)
        self.next_ids[start : start + n] = chosen
        logprobs: list[TokenLogprob | None] = [None] * n
        wants = [i for i, p in enumerate(params) if p is not None and p.logprobs is not None]
        if wants:
            tops = [params[i].logprobs for i in wants]  # type: ignore[union-attr]
            if len(wants) == n:
                logprobs = chosen_logprobs(logits, chosen, tops)
            else:
                pick = torch.tensor(wants, device=logits.device)
                for i, lp in zip(wants, chosen_logprobs(logits[pick], chosen[pick], tops), strict=True):
                    logprobs[i] = lp
        return StepOutput(chosen.tolist(), logprobs)


@contextmanager
def _head_input(head: torch.nn.Module, rows: torch.Tensor, last: torch.Tensor) -> Iterator[None]:
    """Inside the context `head` (the lm_head) sees only position `last[i]` of row i: [m, 1, d_model].

    A prefill over right-padded prompts of different lengths then multiplies the 262k-row head of a real
    vocabulary once per row, where `logits_to_keep` (one set of positions for every row) took each distinct
    last position in every row.
    """

    def pick(_module: torch.nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
        return (args[0][rows, last].unsqueeze(1), *args[1:])

    handle = head.register_forward_pre_hook(pick)
    try:
        yield
    finally:
        handle.remove()


def check_fits(shape: CacheShape, device: torch.device) -> None:
    """Refuse a KV cache that cannot fit in the memory left on `device` (one line naming the settings)."""
    need = shape.bytes
    free = _free_bytes(device)
    if free is not None and need > free:
        raise CacheTooLarge(
            f"the KV cache for STEER_MAX_BATCH={shape.slots} × STEER_MAX_CONTEXT={shape.max_context} needs "
            f"{need / 2**30:.2f} GiB ({shape.layers} layers × {shape.kv_heads} kv heads × {shape.head_dim} "
            f"× {shape.dtype}), but only {free / 2**30:.2f} GiB is free on {device}; lower STEER_MAX_BATCH or "
            "STEER_MAX_CONTEXT"
        )


def _free_bytes(device: torch.device) -> int | None:
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return int(free)
    if device.type == "cpu":
        try:
            with open("/proc/meminfo") as f:
                for line in f:
                    if line.startswith("MemAvailable:"):
                        return int(line.split()[1]) * 1024
        except OSError:
            return None
    return None
