"""How much a freshly trained vector does at the strength it was trained at, so `steer train` can say that a
vector is too weak to matter instead of it being discovered at evaluation.

Two numbers on (a sample of) the training pairs, at strength 1: the residual-stream shift the vector adds
(`shift_norm`, next to the typical size of the residual it is added to, `residual_norm`), and what it does to
the preference margin log π(chosen) − log π(rejected) (`margin_gain`, in nats, and the share of pairs ranked
right, unsteered and steered).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from trainer.eval.metrics import steered
from trainer.logprobs import make_batch, pair_rows, response_logprobs
from trainer.objectives import last_token_states
from trainer.resources import Resources
from trainer.tokens import EncodedPair
from vectors.training_record import Effect
from vectors.vector import SteeringVector

WEAK_MARGIN = 0.1  # nats: below this mean margin gain at strength 1, a vector is reported as too weak
SAMPLE_PAIRS = 256


def describe(effect: Effect) -> str:
    """One line for `steer train` to print: the effect's numbers and whether the vector is too weak to matter."""
    verdict = (
        f"too weak to matter (margin gain under {WEAK_MARGIN:g} nats at strength 1)" if effect.weak else "ok"
    )
    return (
        f"effect at strength 1 on {effect.pairs} training pairs: shift |Δh| {effect.shift_norm:.3g} "
        f"(residual |h| ≈ {effect.residual_norm:.3g}), margin gain {effect.margin_gain:+.3f} nats, pairs ranked "
        f"right {100 * effect.ranked_unsteered:.1f} % → {100 * effect.ranked_steered:.1f} %: {verdict}"
    )


def shift_norm(vector: SteeringVector, res: Resources) -> float:
    """Norm of the residual shift at strength 1 (SAE-space: the decoder image of the code vector)."""
    if vector.space == "sae":
        coder = res.coder
        code = vector.code_vector(coder.d_sae).to(coder.W_dec)
        return float((code @ coder.W_dec).norm())
    return float(vector.dense.float().norm())


@torch.no_grad()
def _margins(res: Resources, rows: list, n: int, batch_pairs: int = 32) -> torch.Tensor:
    """Preference margin log π(chosen) − log π(rejected) of each of the n pairs (rows: chosen, then rejected)."""
    out = []
    for start in range(0, n, batch_pairs):
        idx = list(range(start, min(n, start + batch_pairs)))
        batch = make_batch([rows[i] for i in idx] + [rows[n + i] for i in idx]).to(res.device)
        logp = response_logprobs(res.model, batch).float().cpu()
        out.append(logp[: len(idx)] - logp[len(idx) :])
    return torch.cat(out)


@torch.no_grad()
def _residual_norm(res: Resources, rows: list, n: int, layer: int) -> float:
    """Mean norm of the unsteered block-`layer` output at the last token of up to 64 chosen rows."""
    batch = make_batch(rows[: min(n, 64)]).to(res.device)
    return float(last_token_states(res.model, batch, layer).norm(dim=-1).mean())


def measure_effect(res: Resources, vector: SteeringVector, encoded: Sequence[EncodedPair]) -> Effect:
    """The vector's `Effect` on up to `SAMPLE_PAIRS` training pairs spread evenly over the data (deterministic)."""
    stride = max(1, -(-len(encoded) // SAMPLE_PAIRS))
    sample = list(encoded[::stride])
    rows = pair_rows(sample)
    n = len(sample)
    base = _margins(res, rows, n)
    with steered(res, vector, 1.0):
        after = _margins(res, rows, n)
    gain = float((after - base).mean())
    return Effect(
        pairs=n,
        shift_norm=round(shift_norm(vector, res), 4),
        residual_norm=round(_residual_norm(res, rows, n, vector.layer), 4),
        margin_gain=round(gain, 4),
        ranked_unsteered=round(float((base > 0).float().mean()), 4),
        ranked_steered=round(float((after > 0).float().mean()), 4),
        weak=gain < WEAK_MARGIN,
    )


__all__ = ["WEAK_MARGIN", "describe", "measure_effect", "shift_norm"]
