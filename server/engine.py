"""The engine: model, tokenizer, SAE(s), and batched generation with a different steering config per row.

It knows nothing about HTTP. Generation is a hand-written decode loop over the Hugging Face model with a
`DynamicCache`, left-padded rows, an explicit attention mask and per-row `position_ids`, so that rows can join
(`join`) and leave (`step` drops finished rows) between decode steps: continuous batching. Steering is applied
through `vectors.tables.build_tables` + `vectors.hooks.steering_hooks`, entered around each forward with the
tables of exactly the rows in that forward, so no request ever sees another's steering.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import time
from collections.abc import Iterator
from collections.abc import Sequence as Seq
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, DynamicCache

from server import kvcache
from server.sampling import sample_rows
from server.sequence import Sequence, SteerSpec
from vectors.device import resolve_device, resolve_dtype

log = logging.getLogger(__name__)

FAULT_OOM = "oom"
FAULT_ERROR = "error"
FAULT_STEP = "step"


class InjectedFault(RuntimeError):
    """Raised on purpose by fault injection (tests of error handling)."""


@dataclass(frozen=True)
class EngineConfig:
    """What to load and where."""

    model: str
    sae: tuple[str, ...] = ()
    device: str = "auto"
    dtype: str = "auto"
    max_context: int | None = None
    model_name: str | None = None
    step_delay_s: float = 0.0


@dataclass
class Batch:
    """Rows being decoded together, and their shared cache."""

    seqs: list[Sequence]
    cache: DynamicCache
    mask: torch.Tensor  # [B, T] 1 = real token, 0 = left padding
    positions: torch.Tensor  # [B] position id of the next input token
    next_tokens: list[int]  # last sampled token of each row, not yet fed to the model
    tables_key: tuple[Any, ...] = field(default=())

    def __len__(self) -> int:
        return len(self.seqs)


class Engine:
    """Model + tokenizer + SAE coders (by layer) + batched, per-row steered generation."""

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        coders: dict[int, Any] | None = None,
        *,
        name: str = "model",
        max_context: int | None = None,
        step_delay_s: float = 0.0,
    ) -> None:
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.coders: dict[int, Any] = dict(coders or {})
        self.name = name
        self.step_delay_s = step_delay_s
        cfg = (
            model.config.get_text_config(decoder=True)
            if hasattr(model.config, "get_text_config")
            else model.config
        )
        self.hidden_size: int = int(cfg.hidden_size)
        self.num_layers: int = int(cfg.num_hidden_layers)
        model_ctx = int(getattr(cfg, "max_position_embeddings", 0) or 2048)
        self.context_length = min(max_context, model_ctx) if max_context else model_ctx
        self.eos_ids = _eos_ids(model, tokenizer)
        pad = tokenizer.pad_token_id
        self.pad_id: int = int(pad if pad is not None else (min(self.eos_ids) if self.eos_ids else 0))
        self._tables_cache: tuple[tuple[Any, ...], Any] | None = None
        # transformers 5 renamed `past_key_values` to `cache`; accept both.
        params = inspect.signature(model.forward).parameters
        self._cache_kwarg = "cache" if "cache" in params else "past_key_values"

    # --- construction -----------------------------------------------------------------------------------
    @classmethod
    def load(cls, cfg: EngineConfig) -> Engine:
        """Load the model, tokenizer and SAEs once (blocking; call it off the event loop)."""
        device = resolve_device(cfg.device)
        dtype = resolve_dtype(cfg.dtype, device)
        log.info("loading model %s on %s (%s)", cfg.model, device, dtype)
        tokenizer = AutoTokenizer.from_pretrained(cfg.model)
        model = AutoModelForCausalLM.from_pretrained(cfg.model, dtype=dtype).to(device)
        coders: dict[int, Any] = {}
        if cfg.sae:
            from vectors.sae import load_sae

            for source in cfg.sae:
                coder = load_sae(source, device=device, dtype=dtype)  # model dtype: tables never copy it
                if coder.layer in coders:
                    raise ValueError(
                        f"two SAEs for layer {coder.layer}: {coders[coder.layer].source} and {source}"
                    )
                coders[coder.layer] = coder
                log.info("loaded SAE %s (layer %d, d_sae %d)", source, coder.layer, coder.d_sae)
        name = cfg.model_name or Path(cfg.model.rstrip("/")).name or cfg.model
        return cls(
            model, tokenizer, coders, name=name, max_context=cfg.max_context, step_delay_s=cfg.step_delay_s
        )

    # --- properties -------------------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    def model_info(self) -> Any:
        """`vectors.catalog.ModelInfo` of the served model (what vectors are checked against)."""
        from vectors.catalog import model_info_from_config

        return model_info_from_config(self.model.config)

    # --- prompts ------------------------------------------------------------------------------------------
    def encode(self, *, prompt: str | None = None, messages: Seq[dict[str, str]] | None = None) -> list[int]:
        """Token ids of a prompt or chat, formatted exactly as the trainer formats them."""
        from vectors.prompts import format_prompt

        return format_prompt(self.tokenizer, prompt=prompt, messages=messages)

    # --- ad-hoc steering ----------------------------------------------------------------------------------
    def adhoc_vector(self, feature: int, layer: int | None = None) -> Any:
        """A single-feature SAE vector (value 1 at `feature`), for `sae:<feature>` steering without training."""
        from vectors.metadata import ModelRef, SaeRef, VectorMetadata
        from vectors.vector import SteeringVector

        if not self.coders:
            raise ValueError("no SAE is loaded, so `sae:` steering is unavailable")
        if layer is None:
            if len(self.coders) > 1:
                raise ValueError(
                    f"several SAEs are loaded (layers {sorted(self.coders)}); use sae:<layer>:<feature>"
                )
            layer = next(iter(self.coders))
        if layer not in self.coders:
            raise ValueError(f"no SAE at layer {layer} (loaded: {sorted(self.coders)})")
        coder = self.coders[layer]
        if not 0 <= feature < coder.d_sae:
            raise ValueError(f"feature {feature} out of range [0, {coder.d_sae})")
        meta = VectorMetadata(
            name=f"sae/l{layer}-f{feature}",
            method="manual",
            space="sae",
            layer=layer,
            hook_name=coder.hook_name,
            model=ModelRef(name=self.name, hidden_size=self.hidden_size, num_layers=self.num_layers),
            sae=SaeRef(source=str(coder.source), d_sae=coder.d_sae, architecture=coder.architecture),
            default_strength=1.0,
            strength_range=(-1e9, 1e9),
            apply="both",
        )
        return SteeringVector.sparse(meta, torch.tensor([feature]), torch.tensor([1.0]))

    def check_steer(self, spec: SteerSpec) -> None:
        """Raise `ValueError` if `spec` cannot be steered with (so it fails its request, never a batch)."""
        if not spec.steered:
            return
        from vectors.tables import check_config

        check_config(spec.as_config(), self.coders, self.hidden_size, apply_override=spec.apply)

    # --- generation -----------------------------------------------------------------------------------------
    def prefill(self, seqs: list[Sequence]) -> Batch | None:
        """Run the prompts of new rows, sample each row's first token; None if every row already finished."""
        _inject_faults(seqs)
        lengths = [len(s.prompt_ids) for s in seqs]
        width = max(lengths)
        ids = torch.full((len(seqs), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(seqs), width), dtype=torch.long)
        for row, s in enumerate(seqs):
            ids[row, width - lengths[row] :] = torch.tensor(s.prompt_ids, dtype=torch.long)
            mask[row, width - lengths[row] :] = 1
        positions = (mask.cumsum(dim=1) - 1).clamp(min=0)
        cache = DynamicCache()
        logits, cache = self._forward(seqs, "prompt", ids, mask, positions, cache)
        batch = Batch(
            seqs=list(seqs),
            cache=cache,
            mask=mask.to(self.device),
            positions=torch.tensor(lengths, dtype=torch.long),
            next_tokens=[],
        )
        self._take(batch, logits)
        return self._drop_finished(batch)

    def step(self, batch: Batch) -> Batch | None:
        """One decode step for every row; returns the batch without the rows that finished."""
        if self.step_delay_s:
            time.sleep(self.step_delay_s)
        ids = torch.tensor(batch.next_tokens, dtype=torch.long)[:, None]
        batch.mask = torch.cat([batch.mask, batch.mask.new_ones((len(batch), 1))], dim=1)
        logits, batch.cache = self._forward(
            batch.seqs, "generation", ids, batch.mask, batch.positions[:, None], batch.cache
        )
        _inject_step_faults(batch.seqs)  # after the in-place cache update: the worst state to recover from
        batch.positions = batch.positions + 1
        self._take(batch, logits)
        return self._drop_finished(batch)

    def resume(self, seq: Sequence) -> Batch:
        """Rebuild the cache of a row in mid-generation from its own tokens (after a failed step); no sampling.

        The prompt runs in the prompt phase and the tokens already fed in the generation phase, as they did the
        first time, and the last sampled token is again the next input: the row continues as it would have
        (greedy rows exactly; seeded ones too, unless the failure struck after their random draw).
        """
        if not seq.output_ids:
            raise ValueError("only a row that has sampled a token can be resumed")
        n_prompt, fed = len(seq.prompt_ids), seq.output_ids[:-1]
        ids = torch.tensor([seq.prompt_ids], dtype=torch.long)
        mask = torch.ones((1, n_prompt + len(fed)), dtype=torch.long)
        positions = torch.arange(n_prompt + len(fed), dtype=torch.long)[None]
        _, cache = self._forward(
            [seq], "prompt", ids, mask[:, :n_prompt], positions[:, :n_prompt], DynamicCache()
        )
        if fed:
            ids = torch.tensor([fed], dtype=torch.long)
            _, cache = self._forward([seq], "generation", ids, mask, positions[:, n_prompt:], cache)
        return Batch(
            seqs=[seq],
            cache=cache,
            mask=mask.to(self.device),
            positions=torch.tensor([n_prompt + len(fed)], dtype=torch.long),
            next_tokens=[seq.output_ids[-1]],
        )

    def join(self, running: Batch | None, new: Batch | None) -> Batch | None:
        """One batch holding the rows of both (new rows go last)."""
        if running is None or new is None:
            return running if new is None else new
        cache, mask = kvcache.concat(running.cache, running.mask, new.cache, new.mask)
        return Batch(
            seqs=running.seqs + new.seqs,
            cache=cache,
            mask=mask,
            positions=torch.cat([running.positions, new.positions]),
            next_tokens=running.next_tokens + new.next_tokens,
        )

    def drop_cancelled(self, batch: Batch | None) -> Batch | None:
        """Finish the rows whose client went away and remove them from the batch."""
        if batch is None:
            return None
        for s in batch.seqs:
            if s.cancelled:
                s.finish("cancelled")
        return self._drop_finished(batch)

    def generate(self, seqs: list[Sequence]) -> list[Sequence]:
        """Run rows to completion together (synchronous; tests and warm-up)."""
        batch = self.prefill(seqs)
        while batch is not None:
            batch = self.drop_cancelled(batch)
            if batch is not None:
                batch = self.step(batch)
        return seqs

    # --- internals ------------------------------------------------------------------------------------------
    def _take(self, batch: Batch, logits: torch.Tensor) -> None:
        tokens = sample_rows(logits, [s.sampling for s in batch.seqs], [s.generator for s in batch.seqs])
        batch.next_tokens = tokens
        for s, t in zip(batch.seqs, tokens, strict=True):
            s.push(t, self.tokenizer, self.eos_ids)

    def _drop_finished(self, batch: Batch) -> Batch | None:
        keep = [i for i, s in enumerate(batch.seqs) if not s.finished]
        if not keep:
            return None
        if len(keep) == len(batch):
            return batch
        rows = torch.tensor(keep, dtype=torch.long)
        cache, mask = kvcache.select_rows(batch.cache, batch.mask, rows.to(batch.mask.device))
        return Batch(
            seqs=[batch.seqs[i] for i in keep],
            cache=cache,
            mask=mask,
            positions=batch.positions.index_select(0, rows),
            next_tokens=[batch.next_tokens[i] for i in keep],
        )

    @torch.inference_mode()
    def _forward(
        self,
        seqs: list[Sequence],
        phase: str,
        ids: torch.Tensor,
        mask: torch.Tensor,
        positions: torch.Tensor,
        cache: DynamicCache,
    ) -> tuple[torch.Tensor, DynamicCache]:
        device = self.device
        with self._steering(seqs, phase):
            out = self.model(
                input_ids=ids.to(device),
                attention_mask=mask.to(device),
                position_ids=positions.to(device),
                use_cache=True,
                logits_to_keep=1,
                **{self._cache_kwarg: cache},
            )
        return out.logits[:, -1, :].float(), cache  # the cache is updated in place

    @contextlib.contextmanager
    def _steering(self, seqs: list[Sequence], phase: str) -> Iterator[None]:
        if not any(s.steer.steered for s in seqs):
            yield
            return
        from vectors.hooks import steering_hooks

        tables = self._tables([s.steer for s in seqs])
        with steering_hooks(self.model, tables, auto_phase=False) as session:
            session.phase = phase
            yield

    def _tables(self, specs: list[SteerSpec]) -> Any:
        """Steering tables for exactly these rows (cached while the batch composition does not change)."""
        from vectors.tables import build_tables

        key = tuple(s.key for s in specs)
        if self._tables_cache is not None and self._tables_cache[0] == key:
            return self._tables_cache[1]
        tables = build_tables(
            [s.as_config() for s in specs],
            self.coders,
            self.hidden_size,
            apply_override=[s.apply for s in specs],
            device=self.device,
            dtype=self.dtype,
        )
        self._tables_cache = (key, tables)
        return tables


def _eos_ids(model: Any, tokenizer: Any) -> frozenset[int]:
    ids: set[int] = set()
    gen = getattr(model, "generation_config", None)
    for value in (getattr(gen, "eos_token_id", None), tokenizer.eos_token_id):
        if isinstance(value, int):
            ids.add(value)
        elif isinstance(value, list | tuple):
            ids.update(int(v) for v in value)
    return frozenset(ids)


def _inject_faults(seqs: list[Sequence]) -> None:
    for s in seqs:
        if s.fault == FAULT_OOM:
            raise torch.OutOfMemoryError("injected out-of-memory (fault injection)")
        if s.fault == FAULT_ERROR:
            raise InjectedFault("injected error (fault injection)")


def _inject_step_faults(seqs: list[Sequence]) -> None:
    if any(s.fault == FAULT_STEP for s in seqs):
        raise InjectedFault("injected decode-step error (fault injection)")
