"""`TrainConfig`: everything that defines one training run (the CLI flags map one-to-one onto its fields).

Its own module so that the training loop (`trainer.preference`) and the run around it (`trainer.train`) both
read it without importing each other.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from trainer.data import Columns
from trainer.tokens import Overlong
from vectors.names import validate_name

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
    # further strengths (besides 1) at which the retention penalty also applies, relative to the step's direction
    # d: (1.5,) also at 1.5·d, (-1,) at both ±1 every step; one more forward of the retention pairs per strength
    retain_strengths: tuple[float, ...] = ()
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
        if any(s == 0 or s == 1 for s in self.retain_strengths) or (
            self.retain_strengths and self.reference_mode
        ):
            raise ValueError("retain_strengths must not be 0 or 1 (and are not supported in reference mode)")
        if self.retain_weight < 0 or self.retain_batch_size < 1 or (self.retain_margin or 0) < 0:
            raise ValueError("retain_weight and retain_margin must be >= 0 and retain_batch_size positive")
