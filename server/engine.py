"""The engine: model, tokenizer and SAE(s), loaded once, and the runner that holds every tensor of generation.

It knows nothing about HTTP. `Engine.load` reads the model and SAEs; `reserve` allocates the runner
(`server.runner`: slot KV cache, per-slot steering buffers with hooks installed once, device sampling) for
`max_batch` rows × `max_context` positions, so memory is known at start-up. Prompt formatting, ad-hoc `sae:`
vectors and the steering admission check live here; batching lives in `server.batcher`.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence as Seq
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from server.batcher import Batcher
from server.compiled import EngineMode, EngineStatus
from server.output import OutputStage
from server.runner import ModelRunner
from server.sequence import Sequence, SteerSpec
from vectors.access import check_readable
from vectors.device import resolve_device, resolve_dtype
from vectors.hooks import text_config

log = logging.getLogger(__name__)

EAGER_ATTENTION = ("gemma2", "gemma3")  # attention logit softcapping: only the eager kernel has it


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
    max_batch: int = 8
    max_neg_features: int = 256


class Engine:
    """Model + tokenizer + SAE coders (by layer) + the runner of batched, per-row steered generation."""

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        coders: dict[int, Any] | None = None,
        *,
        name: str = "model",
        max_context: int | None = None,
        step_delay_s: float = 0.0,
        max_batch: int = 8,
        max_neg_features: int = 256,
    ) -> None:
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.coders: dict[int, Any] = dict(coders or {})
        self.name = name
        self.step_delay_s = step_delay_s
        cfg = text_config(model)
        self.hidden_size: int = int(cfg.hidden_size)
        self.num_layers: int = int(cfg.num_hidden_layers)
        model_ctx = int(getattr(cfg, "max_position_embeddings", 0) or 2048)
        self.context_length = min(max_context, model_ctx) if max_context else model_ctx
        self.eos_ids = _eos_ids(model, tokenizer)
        self._rows_cache: dict[tuple[Any, ...], Any] = {}
        # One driver at a time: a scheduler holds it while its rows occupy slots; start-up and `generate`
        # hold it for their call (tests run several servers over one engine; their turns must not overlap).
        self.turn = threading.Lock()
        self.runner: ModelRunner = None  # type: ignore[assignment]
        self.reserve(max_batch, max_neg_features)

    # --- construction -----------------------------------------------------------------------------------
    @classmethod
    def load(cls, cfg: EngineConfig) -> Engine:
        """Load the model, tokenizer and SAEs once (blocking; call it off the event loop)."""
        device = resolve_device(cfg.device)
        dtype = resolve_dtype(cfg.dtype, device)
        log.info("loading model %s on %s (%s)", cfg.model, device, dtype)
        check_readable(cfg.model)  # a local model we cannot read is said so (a hub id names no path)
        tokenizer = AutoTokenizer.from_pretrained(cfg.model)
        extra: dict[str, Any] = {}
        from transformers import AutoConfig

        if getattr(AutoConfig.from_pretrained(cfg.model), "model_type", "") in EAGER_ATTENTION:
            extra["attn_implementation"] = "eager"
        model = AutoModelForCausalLM.from_pretrained(cfg.model, dtype=dtype, **extra).to(device)
        coders: dict[int, Any] = {}
        if cfg.sae:
            from vectors.sae import load_sae

            for source in cfg.sae:
                coder = load_sae(source, device=device, dtype=dtype)  # model dtype: slots never copy it
                if coder.layer in coders:
                    raise ValueError(
                        f"two SAEs for layer {coder.layer}: {coders[coder.layer].source} and {source}"
                    )
                coders[coder.layer] = coder
                log.info("loaded SAE %s (layer %d, d_sae %d)", source, coder.layer, coder.d_sae)
        name = cfg.model_name or Path(cfg.model.rstrip("/")).name or cfg.model
        return cls(
            model,
            tokenizer,
            coders,
            name=name,
            max_context=cfg.max_context,
            step_delay_s=cfg.step_delay_s,
            max_batch=cfg.max_batch,
            max_neg_features=cfg.max_neg_features,
        )

    def reserve(self, max_batch: int, max_neg_features: int) -> None:
        """Allocate the runner for at least `max_batch` slots (a no-op when the current one is big enough)."""
        with self.turn:
            self._reserve(max_batch, max_neg_features)

    def _reserve(self, max_batch: int, max_neg_features: int) -> None:
        old = self.runner
        if old is not None and old.slots >= max_batch and old.max_neg >= max_neg_features:
            return
        if old is not None:
            old.close()
        self.runner = ModelRunner(
            self.model,
            self.coders,
            slots=max_batch,
            max_context=self.context_length,
            max_neg=max_neg_features,
        )
        log.info(
            "KV cache: %d slots × %d positions, %.1f MiB",
            max_batch,
            self.context_length,
            self.runner.cache_bytes / 2**20,
        )

    def compile(self, requested: EngineMode, backend: str, buckets: list[int] | None) -> EngineStatus:
        """Compile and verify the decode step (`ModelRunner.compile`) in the engine's turn."""
        with self.turn:
            return self.runner.compile(requested, backend, buckets)

    def close(self) -> None:
        """Remove the engine's hooks from the model (another engine may then drive it)."""
        self.runner.close()

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

    # --- steering -----------------------------------------------------------------------------------------
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

    def steering_rows(self, spec: SteerSpec) -> dict[int, Any]:
        """What `spec` writes into a slot (layer -> `vectors.slots.LayerRow`); identical configs share it."""
        if not spec.steered:
            return {}
        rows = self._rows_cache.get(spec.key)
        if rows is None:
            from vectors.slots import compose

            rows = compose(spec.as_config(), self.coders, self.hidden_size, apply_override=spec.apply)  # type: ignore[arg-type]
            if len(self._rows_cache) >= 256:
                self._rows_cache.clear()
            self._rows_cache[spec.key] = rows
        return rows

    def check_steer(self, spec: SteerSpec) -> None:
        """Raise `ValueError` if `spec` cannot be steered with (so it fails its request, never a batch)."""
        self.runner.steering.check(self.steering_rows(spec))

    # --- generation -----------------------------------------------------------------------------------------
    def generate(self, seqs: list[Sequence]) -> list[Sequence]:
        """Run rows to completion together (synchronous; tests and warm-up)."""
        with self.turn:
            return Batcher(self, OutputStage(self.tokenizer, self.eos_ids)).run(seqs)


def _eos_ids(model: Any, tokenizer: Any) -> frozenset[int]:
    ids: set[int] = set()
    gen = getattr(model, "generation_config", None)
    for value in (getattr(gen, "eos_token_id", None), tokenizer.eos_token_id):
        if isinstance(value, int):
            ids.add(value)
        elif isinstance(value, list | tuple):
            ids.update(int(v) for v in value)
    return frozenset(ids)
