"""The real model's SAE: sae-lens's trainer on activations computed once, then seen for several epochs.

The culture world trains its SAE with sae-lens's runner, which runs the model for every batch. On Gemma 3 270M
that costs ~1–2.5k tokens/s on 2 cores, and the offline corpus (CPython's prose, ~170k tokens) is far smaller
than the millions of samples an SAE needs: so the activations of layer L are computed once (the forward stops
after block L), BOS positions dropped (Gemma's BOS residual is an outlier hundreds of times the norm of the
rest), as are the few positions whose norm is over `OUTLIER_FACTOR` × the median (0.03 % of the corpus's
positions at layer 6, holding 16 % of its variance: left in, they dominate the reconstruction loss), and
sae-lens's `SAETrainer` sees them in a fresh random order each epoch. The activations are scaled by
sae-lens's `expected_average_only_in` normalization, folded into the weights when training ends, so the saved
SAE reads raw residuals like any other.
"""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from trainer.world.sae_train import hook_name_for, layer_activations


@dataclass(frozen=True)
class SaeTraining:
    """What the trainer is asked for: the dictionary size, sparsity pressure and schedule."""

    d_sae: int
    l1_coefficient: float
    lr: float
    samples: int  # activation vectors seen in all (epochs × corpus positions)
    batch: int
    seed: int


OUTLIER_FACTOR = 3.0


def norm_cap(acts: torch.Tensor) -> float:
    """The residual norm above which a position is an outlier: `OUTLIER_FACTOR` × the median."""
    return OUTLIER_FACTOR * float(acts.norm(dim=-1).median())


def collect_activations(model: Any, rows: torch.Tensor, layer: int) -> torch.Tensor:
    """Block `layer`'s output at every position but the first (BOS) of `rows` ([N, T] ids): [N·(T−1), d]."""
    return layer_activations(model, rows, layer)[:, 1:].reshape(-1, model.config.hidden_size)


def _epochs(acts: torch.Tensor, batch: int, seed: int) -> Iterator[torch.Tensor]:
    """Batches of `acts`, reshuffled every epoch, forever (the trainer stops after its sample budget)."""
    gen = torch.Generator().manual_seed(seed)
    while True:
        order = torch.randperm(len(acts), generator=gen)
        for start in range(0, len(order) - batch + 1, batch):
            yield acts[order[start : start + batch]]


def train_sae_on_activations(
    acts: torch.Tensor, layer: int, spec: SaeTraining, out_dir: Path, *, model_name: str
) -> None:
    """Train a standard (ReLU) SAE on `acts` ([n, d]) with sae-lens and save its inference form to `out_dir`."""
    from sae_lens import StandardTrainingSAE, StandardTrainingSAEConfig
    from sae_lens.config import SAETrainerConfig
    from sae_lens.training.sae_trainer import SAETrainer

    torch.manual_seed(spec.seed)
    steps = spec.samples // spec.batch
    sae_cfg = StandardTrainingSAEConfig(
        d_in=acts.shape[1],
        d_sae=spec.d_sae,
        l1_coefficient=spec.l1_coefficient,
        l1_warm_up_steps=max(1, steps // 10),
        normalize_activations="expected_average_only_in",
    )
    sae_cfg.metadata.hook_name = hook_name_for(layer)
    sae_cfg.metadata.model_name = model_name
    sae = StandardTrainingSAE(sae_cfg)
    trainer_cfg = SAETrainerConfig(
        total_training_samples=steps * spec.batch,
        train_batch_size_samples=spec.batch,
        lr=spec.lr,
        lr_warm_up_steps=max(1, steps // 20),
        lr_end=spec.lr / 10,
        lr_decay_steps=max(1, steps // 5),  # the last fifth decays to lr / 10
        dead_feature_window=max(50, steps // 4),
        feature_sampling_window=max(100, steps // 2),
        n_batches_for_norm_estimate=min(100, max(1, len(acts) // spec.batch)),
    )
    quiet = logging.getLogger("sae_lens")
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore", UserWarning)
            trained = SAETrainer(trainer_cfg, sae, _epochs(acts, spec.batch, spec.seed)).fit()
    finally:
        quiet.setLevel(level)
    trained.save_inference_model(out_dir)
