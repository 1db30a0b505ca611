"""The loaded model: model, tokenizer and SAE(s), loaded once, and the runner that holds every tensor of generation.

It knows nothing about HTTP. `LoadedModel.load` reads the model and SAEs; `reserve` allocates the runner
(`server.engine.runner`: slot KV cache, per-slot steering buffers with hooks installed once, device sampling) for
`max_batch` rows × `max_context` positions, so memory is known at start-up. Prompt formatting, ad-hoc `sae:`
vectors and the steering admission check live here; batching lives in `server.engine.batcher`.
"""

from __future__ import annotations

import functools
import logging
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerBase

from server.engine.attention import NAME as ATTENTION_NAME
from server.engine.attention import use_grouped_sdpa, use_stock_sdpa
from server.engine.batcher import Batcher
from server.engine.compiled_step import EngineMode, EngineStatus
from server.engine.output import OutputStage
from server.engine.packed import can_pack, pack_linears, unpack_linears
from server.engine.request import Row, SteerSpec
from server.engine.runner import ModelRunner
from server.engine.steering import SteeringTable, adhoc_vector
from server.metrics import Metrics
from vectors.access import check_readable
from vectors.device import resolve_device, resolve_dtype
from vectors.hooks import text_config
from vectors.vector import SteeringVector

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
    max_batch: int = 8
    max_neg_features: int = 256


class LoadedModel:
    """Model + tokenizer + SAE coders (by layer) + the runner of batched, per-row steered generation."""

    runner_class: type[ModelRunner] = ModelRunner  # what `reserve` builds (tests put a double here)

    def __init__(
        self,
        model: Any,
        tokenizer: PreTrainedTokenizerBase,
        coders: dict[int, Any] | None = None,
        *,
        name: str = "model",
        max_context: int | None = None,
        max_batch: int = 8,
        max_neg_features: int = 256,
    ) -> None:
        self.model = model.eval()
        if can_pack(model):  # CPU float32: the matrix products on oneDNN-packed weights
            log.info("packed %d linear layers for oneDNN", pack_linears(model))
        if use_grouped_sdpa(model):  # one-token attention on the key/value heads, compiled too
            log.info("attention: %s (grouped-query decode without repeat_kv)", ATTENTION_NAME)
        self.tokenizer = tokenizer
        self.coders: dict[int, Any] = dict(coders or {})
        self.name = name
        cfg = text_config(model)
        self.hidden_size: int = int(cfg.hidden_size)
        self.num_layers: int = int(cfg.num_hidden_layers)
        model_ctx = int(getattr(cfg, "max_position_embeddings", 0) or 2048)
        self.context_length = min(max_context, model_ctx) if max_context else model_ctx
        self.eos_ids = _eos_ids(model, tokenizer)
        self.steering = SteeringTable(self.coders, self.hidden_size)
        # One driver at a time: a scheduler holds it while its rows occupy slots; start-up and `generate`
        # hold it for their call (tests run several servers over one engine; their turns must not overlap).
        self.turn = threading.Lock()
        self.runner = self._new_runner(max_batch, max_neg_features)

    # --- construction -----------------------------------------------------------------------------------
    @classmethod
    def load(cls, cfg: EngineConfig) -> LoadedModel:
        """Load the model, tokenizer and SAEs once (blocking; call it off the event loop)."""
        device = resolve_device(cfg.device)
        dtype = resolve_dtype(cfg.dtype, device)
        log.info("loading model %s on %s (%s)", cfg.model, device, dtype)
        check_readable(cfg.model)  # a local model we cannot read is said so (a hub id names no path)
        tokenizer = AutoTokenizer.from_pretrained(cfg.model)
        model: Any = AutoModelForCausalLM.from_pretrained(
            cfg.model, dtype=dtype, **attention_kwargs(cfg.model)
        )
        model = model.to(device)
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
            max_batch=cfg.max_batch,
            max_neg_features=cfg.max_neg_features,
        )

    def reserve(self, max_batch: int, max_neg_features: int) -> None:
        """Allocate the runner for at least `max_batch` slots (a no-op when the current one is big enough)."""
        with self.turn:
            self._reserve(max_batch, max_neg_features)

    def _reserve(self, max_batch: int, max_neg_features: int) -> None:
        old = self.runner
        if old.slots >= max_batch and old.max_neg >= max_neg_features:
            return
        old.close()
        self.runner = self._new_runner(max_batch, max_neg_features)

    def _new_runner(self, max_batch: int, max_neg_features: int) -> ModelRunner:
        runner = self.runner_class(
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
            runner.cache_bytes / 2**20,
        )
        return runner

    def compile(self, requested: EngineMode, backend: str, buckets: list[int] | None) -> EngineStatus:
        """Compile and verify the decode step (`ModelRunner.compile`) in the engine's turn."""
        with self.turn:
            return self.runner.compile(requested, backend, buckets)

    def close(self) -> None:
        """Remove the engine's hooks and packed layers from the model (another engine or a trainer may then use
        it)."""
        self.runner.close()
        unpack_linears(self.model)
        use_stock_sdpa(self.model)

    # --- properties -------------------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        param: torch.Tensor = next(self.model.parameters())
        return param.device

    @property
    def dtype(self) -> torch.dtype:
        param: torch.Tensor = next(self.model.parameters())
        return param.dtype

    @functools.cached_property
    def vocab_size(self) -> int:
        """Token ids a prompt may hold: known to the tokenizer and inside the model's embedding."""
        rows = self.model.get_input_embeddings().num_embeddings
        return min(len(self.tokenizer), int(rows))

    def model_info(self) -> Any:
        """`vectors.catalog.ModelInfo` of the served model (what vectors are checked against)."""
        from vectors.catalog import model_info_from_config

        return model_info_from_config(self.model.config)

    # --- prompts ------------------------------------------------------------------------------------------
    def encode(
        self, *, prompt: str | None = None, messages: Sequence[Mapping[str, str]] | None = None
    ) -> list[int]:
        """Token ids of a prompt or chat, formatted exactly as the trainer formats them."""
        from vectors.prompts import format_prompt

        return format_prompt(self.tokenizer, prompt=prompt, messages=messages)

    # --- steering -----------------------------------------------------------------------------------------
    def adhoc_vector(self, feature: int, layer: int | None = None) -> SteeringVector:
        """A single-feature SAE vector (value 1 at `feature`), for `sae:<feature>` steering without training."""
        from vectors.metadata import ModelRef

        model = ModelRef(name=self.name, hidden_size=self.hidden_size, num_layers=self.num_layers)
        return adhoc_vector(self.coders, model, feature, layer)

    def check_steer(self, spec: SteerSpec) -> None:
        """Raise `ValueError` if `spec` cannot be steered with (so it fails its request, never a batch)."""
        self.runner.steering.check(self.steering.rows(spec))

    # --- generation -----------------------------------------------------------------------------------------
    def generate(self, seqs: list[Row]) -> list[Row]:
        """Run rows to completion together (synchronous; tests and warm-up)."""
        with self.turn:
            return self.batcher().run(seqs)

    def batcher(self, metrics: Metrics | None = None) -> Batcher:
        """A batcher over this model's runner and steering table (its rows' events go to their requests)."""
        output = OutputStage(self.tokenizer, self.eos_ids, metrics)
        return Batcher(self.runner, self.steering, output, metrics)


def attention_kwargs(model: str) -> dict[str, Any]:
    """`from_pretrained` arguments choosing the attention kernel the engine needs for this model."""
    from transformers import AutoConfig

    if getattr(AutoConfig.from_pretrained(model), "model_type", "") in EAGER_ATTENTION:
        return {"attn_implementation": "eager"}
    return {}


def _eos_ids(model: Any, tokenizer: Any) -> frozenset[int]:
    ids: set[int] = set()
    gen = getattr(model, "generation_config", None)
    for value in (getattr(gen, "eos_token_id", None), tokenizer.eos_token_id):
        if isinstance(value, int):
            ids.add(value)
        elif isinstance(value, list | tuple):
            ids.update(int(v) for v in value)
    return frozenset(ids)
