"""The world's SAE: trained with sae-lens's own runner on one decoder layer's output, then measured.

sae-lens wraps the Hugging Face model (`HookedProxyLM`) and hooks the submodule `model.layers.{L}`,
so the saved SAE's `hook_name` is `model.layers.{L}` — the output of decoder block L.
"""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from datasets import Dataset

from trainer.world.config import WorldConfig


@dataclass(frozen=True)
class SaeStats:
    """Quality of the SAE on held-out rows (BOS positions excluded, as in training)."""

    hook_name: str
    d_sae: int
    fve: float  # fraction of variance explained
    l0: float  # mean number of active features per token
    dead_features: int  # features that never fire on the held-out tokens
    eval_tokens: int


def hook_name_for(layer: int) -> str:
    return f"model.layers.{layer}"


def train_sae(model: Any, tokenizer: Any, rows: torch.Tensor, config: WorldConfig, out_dir: Path) -> None:
    """Train a standard (ReLU) SAE on `rows` ([N, context_size] token ids) and save it to `out_dir`."""
    # Imported here: sae-lens is heavy and only this stage needs its training side.
    from sae_lens import (
        LanguageModelSAERunnerConfig,
        LanguageModelSAETrainingRunner,
        StandardTrainingSAEConfig,
    )
    from sae_lens.config import LoggingConfig
    from sae_lens.load_model import HookedProxyLM

    hook_name = hook_name_for(config.layer)
    context = rows.shape[1]
    runner_cfg = LanguageModelSAERunnerConfig(
        sae=StandardTrainingSAEConfig(
            d_in=config.hidden_size,
            d_sae=config.hidden_size * config.sae_expansion,
            l1_coefficient=config.sae_l1_coefficient,
            l1_warm_up_steps=max(1, config.sae_training_tokens // config.sae_batch_tokens // 10),
            normalize_activations="expected_average_only_in",
        ),
        model_name="culture-world",
        model_class_name="AutoModelForCausalLM",
        hook_name=hook_name,
        dataset_path="culture-world",
        is_dataset_tokenized=True,
        streaming=False,
        context_size=context,
        prepend_bos=False,
        exclude_special_tokens=[tokenizer.bos_token_id],
        training_tokens=config.sae_training_tokens,
        train_batch_size_tokens=config.sae_batch_tokens,
        store_batch_size_prompts=32,
        n_batches_in_buffer=2 * -(-config.sae_batch_tokens // context),
        n_batches_for_norm_estimate=10,
        lr=config.sae_lr,
        lr_warm_up_steps=10,
        lr_scheduler_name="constant",
        n_eval_batches=2,
        dead_feature_window=500,
        feature_sampling_window=1000,
        device="cpu",
        seed=config.seed,
        logger=LoggingConfig(log_to_wandb=False),
        checkpoint_path=None,
        output_path=str(out_dir),
        verbose=False,
    )
    proxy = HookedProxyLM(model, tokenizer, hook_names=[hook_name])
    dataset = Dataset.from_dict({"input_ids": rows.tolist()})
    quiet = logging.getLogger("sae_lens")
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            # sae-lens warns that the in-memory dataset is reused for several epochs: intended here.
            warnings.simplefilter("ignore", UserWarning)
            with contextlib.redirect_stdout(io.StringIO()):
                runner = LanguageModelSAETrainingRunner(
                    runner_cfg, override_dataset=dataset, override_model=proxy
                )
            runner.run()
    finally:
        quiet.setLevel(level)


class _Captured(Exception):
    """Raised by the capture hook: the blocks after the one read are not run."""


@torch.no_grad()
def layer_activations(model: Any, rows: torch.Tensor, layer: int) -> torch.Tensor:
    """Output of decoder block `layer` for `rows`, [N, T, d] (no padding in `rows`); the forward stops there."""
    captured: list[torch.Tensor] = []

    def hook(_module: Any, _inputs: Any, output: Any) -> None:
        captured.append((output[0] if isinstance(output, tuple) else output).detach())
        raise _Captured

    handle = model.model.layers[layer].register_forward_hook(hook)
    try:
        for start in range(0, len(rows), 64):
            with contextlib.suppress(_Captured):
                model(input_ids=rows[start : start + 64], logits_to_keep=1)
    finally:
        handle.remove()
    return torch.cat(captured)


@torch.no_grad()
def measure_sae(
    model: Any, rows: torch.Tensor, sae_dir: Path, layer: int, *, max_norm: float | None = None
) -> SaeStats:
    """FVE, L0 and dead features of the saved SAE on held-out rows (positions after BOS; with `max_norm`, the
    positions whose residual norm is at most that, as the SAE was trained)."""
    return sae_stats(layer_activations(model, rows, layer)[:, 1:], sae_dir, max_norm=max_norm)


@torch.no_grad()
def sae_stats(acts: torch.Tensor, sae_dir: Path, *, max_norm: float | None = None) -> SaeStats:
    """`measure_sae` on activations already computed ([..., d]): FVE around their mean, L0, never-active features."""
    from sae_lens import SAE

    sae = SAE.load_from_disk(str(sae_dir), device="cpu")
    acts = acts.reshape(-1, sae.cfg.d_in)
    if max_norm is not None:
        acts = acts[acts.norm(dim=-1) <= max_norm]
    codes = sae.encode(acts)
    recon = sae.decode(codes)
    residual = (acts - recon).pow(2).sum()
    total = (acts - acts.mean(0)).pow(2).sum()
    active = codes > 0
    return SaeStats(
        hook_name=sae.cfg.metadata.hook_name,
        d_sae=sae.cfg.d_sae,
        fve=float(1 - residual / total),
        l0=float(active.sum(-1).float().mean()),
        dead_features=int((~active.any(0)).sum()),
        eval_tokens=acts.shape[0],
    )
