"""Fail closed: before the vLLM engine serves, a probe with known steering must match our own reference.

The plugin runs inside vLLM's workers, where nothing of ours can see whether a hook fired (a model class we do
not hook, a runner that skipped our feeder, a stale compiled graph). So start-up asks vLLM for the first-token
log-probs of one prompt, unsteered and steered with a config that must move them (a strong positive SAE feature
and the removal of the prompt's most active one: the dense delta and YaPO's negative-support term), and compares
them with the same forward in transformers on the same weights, steered by `vectors.slots.apply_config` (the
code every other path is tested against). A mismatch, or steering that changed nothing, refuses the start-up
with one line (`SteeringCheckFailed`). The reference runs in float32 on this process's CPU: it needs the model
to fit the front end's memory.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch

from server.engine.request import SteerSpec
from server.engine.steering import adhoc_vector
from vectors.errors import SteerError
from vectors.hooks import layer_hook
from vectors.metadata import ModelRef
from vectors.sae import SparseCoder
from vectors.slots import apply_config

PROBE_PROMPT = "At a wedding in my country we"
TOLERANCE = {"float32": 2e-3, "float16": 0.1, "bfloat16": 0.2}  # |Δ log-prob| of the first token, by dtype
TOP = 10  # log-probs compared per forward


class SteeringCheckFailed(SteerError):
    """The start-up probe found steering not engaged, or not equal to the reference."""


@dataclass(frozen=True)
class Probe:
    """A steering config that must move the first token's log-probs, and the reference's log-probs [vocab]."""

    prompt_ids: list[int]
    spec: SteerSpec
    steered: torch.Tensor
    plain: torch.Tensor
    tolerance: float


def make_probe(
    model: torch.nn.Module,
    prompt_ids: list[int],
    coders: Mapping[int, SparseCoder],
    ref: ModelRef,
    dtype: str,
) -> Probe:
    """Choose the probe's features on the reference model (float32) and compute its reference log-probs."""
    if not coders:
        raise SteeringCheckFailed("the start-up probe needs an SAE (STEER_SAE) to steer with")
    layer = min(coders)
    coder = coders[layer]
    seen: list[torch.Tensor] = []

    def capture(h: torch.Tensor) -> torch.Tensor:
        seen.append(h.detach())
        return h

    ids = torch.tensor([prompt_ids])
    with torch.no_grad(), layer_hook(model, layer, capture):
        plain = torch.log_softmax(model(ids).logits[0, -1].float(), -1)
    h = seen[0][0].to(coder.W_dec)
    z = coder.encode(h)
    last = z[-1]
    off = int(torch.argmin(z.amax(0)))  # a feature silent on the whole prompt: a pure positive delta
    strength = float(h[-1].norm() / coder.W_dec[off].norm())
    pairs = [(adhoc_vector(coders, ref, off, layer), 2.0 * strength)]
    if bool(last.max() > 0):  # the prompt's most active feature, removed: the negative-support term
        on = int(torch.argmax(last))
        pairs.append((adhoc_vector(coders, ref, on, layer), -4.0 * float(last[on])))
    spec = SteerSpec(tuple(pairs), "both")
    with torch.no_grad(), apply_config(model, spec.as_config(), coders):
        steered = torch.log_softmax(model(ids).logits[0, -1].float(), -1)
    tolerance = TOLERANCE.get(dtype, TOLERANCE["bfloat16"])
    moved = float((steered - plain).abs()[torch.topk(steered, TOP).indices].max())
    if moved < 10 * tolerance:
        raise SteeringCheckFailed(
            f"the start-up probe moves the first token's log-probs by {moved:.2g} only; cannot check steering"
        )
    return Probe(list(prompt_ids), spec, steered, plain, tolerance)


def check_probe(probe: Probe, steered: Mapping[int, float], plain: Mapping[int, float]) -> None:
    """Compare the engine's top first-token log-probs (unsteered and steered) with the reference's."""
    for label, seen, want in (("unsteered", plain, probe.plain), ("steered", steered, probe.steered)):
        if not seen:
            raise SteeringCheckFailed(f"the engine returned no {label} log-probs for the start-up probe")
        diff = max(abs(lp - float(want[t])) for t, lp in seen.items())
        if diff > probe.tolerance:
            engaged = label == "unsteered" or _differs(steered, plain, probe.tolerance)
            why = "steering did not engage" if not engaged else "the engine does not match the reference"
            raise SteeringCheckFailed(
                f"start-up probe failed: {why} ({label} first-token log-probs differ by {diff:.3g} > "
                f"{probe.tolerance:g}); refusing to serve steered requests"
            )


def _differs(a: Mapping[int, float], b: Mapping[int, float], tolerance: float) -> bool:
    shared = set(a) & set(b)
    return set(a) != set(b) or any(abs(a[t] - b[t]) > tolerance for t in shared)
