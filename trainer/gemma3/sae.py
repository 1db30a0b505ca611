"""The real model's SAE: sae-lens's trainer on activations computed once, then seen for several epochs.

The culture world trains its SAE with sae-lens's runner, which runs the model for every batch. On Gemma 3 270M
that costs ~1–2.5k tokens/s on 2 cores, and the offline corpus (CPython's prose, ~142k tokens) is far smaller
than the millions of samples an SAE needs: so the activations of layer L are computed once (the forward stops
after block L), BOS positions dropped (Gemma's BOS residual is an outlier hundreds of times the norm of the
rest), as are the few positions whose norm is over `OUTLIER_FACTOR` × the median (0.03 % of the corpus's
positions at layer 6, holding 16 % of its variance: left in, they dominate the reconstruction loss), and
sae-lens's `SAETrainer` sees them in a fresh random order each epoch.

The activations are scaled by sae-lens's `expected_average_only_in` normalization (its factor computed over all
of them), folded into the weights when training ends, so the saved SAE reads raw residuals like any other. The
decoder bias starts at the activations' mean: Gemma's residual has a large constant part (at layer 8 the mean's
squared norm is ~16× the variance, one coordinate ~5,000), which sae-lens's zero start leaves for the features
to reconstruct, dense and poorly (docs/real-model-results.md, "SAE runs, third round").
"""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch

from trainer.world.sae_train import hook_name_for, layer_activations

Architecture = Literal["batchtopk", "jumprelu", "standard"]


@dataclass(frozen=True)
class SaeTraining:
    """What the trainer is asked for: the architecture, dictionary size, sparsity pressure and schedule.

    `batchtopk` keeps the `k` largest activations per sample on average over each batch while training (L0 is
    set, not coaxed out of a penalty) and is saved as a JumpReLU SAE with the learned threshold, so the server
    keeps its element-wise fast path; `jumprelu` trains that form directly with an L0 penalty
    (`sparsity_coefficient`); `standard` is a ReLU SAE with an L1 penalty (`sparsity_coefficient`)."""

    d_sae: int
    lr: float
    samples: int  # activation vectors seen in all (epochs × corpus positions)
    batch: int
    seed: int
    architecture: Architecture = "batchtopk"
    k: float = 32.0  # batchtopk: mean active features per sample
    sparsity_coefficient: float = 6.0  # standard: L1; jumprelu: L0
    b_dec_at_mean: bool = True  # start the decoder bias at the activations' mean (sae-lens starts it at 0)


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
    """Train an SAE on `acts` ([n, d]) with sae-lens and save its inference form to `out_dir`."""
    from sae_lens.config import SAETrainerConfig
    from sae_lens.training.sae_trainer import SAETrainer

    torch.manual_seed(spec.seed)
    steps = spec.samples // spec.batch
    sae = _training_sae(spec, acts.shape[1], steps)
    sae.cfg.metadata.hook_name = hook_name_for(layer)
    sae.cfg.metadata.model_name = model_name
    trainer_cfg = SAETrainerConfig(
        total_training_samples=steps * spec.batch,
        train_batch_size_samples=spec.batch,
        lr=spec.lr,
        lr_warm_up_steps=max(1, steps // 20),
        lr_end=spec.lr / 10,
        lr_decay_steps=max(1, steps // 5),  # the last fifth decays to lr / 10
        dead_feature_window=max(50, steps // 4),
        feature_sampling_window=max(100, steps // 2),
    )
    quiet = logging.getLogger("sae_lens")
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore", UserWarning)
            trainer = SAETrainer(trainer_cfg, sae, _epochs(acts, spec.batch, spec.seed))
            # the normalization's factor over all of `acts` (sae-lens's own estimate reads 100 batches)
            scale = acts.shape[1] ** 0.5 / float(acts.norm(dim=-1).mean())
            trainer.activation_scaler.scaling_factor = scale
            if spec.b_dec_at_mean:
                with torch.no_grad():
                    sae.b_dec.copy_(acts.mean(0) * scale)
            trained = trainer.fit()
    finally:
        quiet.setLevel(level)
    trained.save_inference_model(out_dir)


def _training_sae(spec: SaeTraining, d_in: int, steps: int) -> Any:
    """sae-lens's training SAE of `spec.architecture`, its sparsity penalty warmed up over the first tenth."""
    from sae_lens import (
        BatchTopKTrainingSAE,
        BatchTopKTrainingSAEConfig,
        JumpReLUTrainingSAE,
        JumpReLUTrainingSAEConfig,
        StandardTrainingSAE,
        StandardTrainingSAEConfig,
    )

    common: dict[str, Any] = {
        "d_in": d_in,
        "d_sae": spec.d_sae,
        "normalize_activations": "expected_average_only_in",
    }
    warm_up = max(1, steps // 10)
    if spec.architecture == "batchtopk":
        return BatchTopKTrainingSAE(BatchTopKTrainingSAEConfig(k=spec.k, **common))
    if spec.architecture == "jumprelu":
        cfg = JumpReLUTrainingSAEConfig(
            l0_coefficient=spec.sparsity_coefficient, l0_warm_up_steps=warm_up, **common
        )
        return JumpReLUTrainingSAE(cfg)
    return StandardTrainingSAE(
        StandardTrainingSAEConfig(
            l1_coefficient=spec.sparsity_coefficient, l1_warm_up_steps=warm_up, **common
        )
    )
