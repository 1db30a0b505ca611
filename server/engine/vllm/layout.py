"""What crosses from our front end into vLLM's workers: the plugin's layout and each request's steering.

The layout (`SteerLayout`) rides in `VllmConfig.additional_config`, which reaches every worker (tensor-parallel
rank, pipeline stage, Ray worker) and is part of vLLM's config hash, so its compile cache never serves a graph
built for another layout. A request's steering (`RequestSteer`) rides in `SamplingParams.extra_args`: names,
strengths and fingerprints only (msgpack-safe); each worker loads the vectors itself.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from vectors.metadata import ApplyPhase

LAYOUT_KEY = "sparse_steer"  # our entry in VllmConfig.additional_config
ARGS_KEY = "sparse_steer"  # our entry in SamplingParams.extra_args
PLUGIN_VERSION = 1  # bump when the plugin's forward changes: it salts vLLM's compile cache
_ADHOC = re.compile(r"sae:(\d+):(\d+)")


@dataclass(frozen=True)
class SteerLayout:
    """The plugin's fixed shapes and sources, the same in every worker."""

    vectors: str  # the catalog folder every worker reads
    sae: tuple[str, ...] = ()  # SAE sources (local sae-lens folders or release/id)
    slots: int = 9  # distinct steering configs at once, slot 0 unsteered (vLLM's max_num_seqs + 1)
    max_neg: int = 64  # negative features per config and layer (more: the request is refused)
    max_tokens: int = 8192  # tokens in one forward (vLLM's max_num_batched_tokens)
    model_name: str = "model"  # the served name (ad-hoc `sae:` vectors record it)

    def to_config(self) -> dict[str, Any]:
        """The `additional_config` entry (JSON: vLLM hashes it)."""
        return {
            LAYOUT_KEY: {
                "version": PLUGIN_VERSION,
                "vectors": self.vectors,
                "sae": list(self.sae),
                "slots": self.slots,
                "max_neg": self.max_neg,
                "max_tokens": self.max_tokens,
                "model_name": self.model_name,
            }
        }

    @classmethod
    def from_config(cls, additional: Mapping[str, Any] | None) -> SteerLayout | None:
        """The layout in a vLLM config, None when the plugin is not asked for (plain vLLM runs untouched)."""
        raw = (additional or {}).get(LAYOUT_KEY)
        if raw is None:
            return None
        if raw.get("version") != PLUGIN_VERSION:
            raise ValueError(
                f"sparse-steer layout version {raw.get('version')!r}, plugin is {PLUGIN_VERSION}"
            )
        return cls(
            vectors=str(raw["vectors"]),
            sae=tuple(str(s) for s in raw["sae"]),
            slots=int(raw["slots"]),
            max_neg=int(raw["max_neg"]),
            max_tokens=int(raw["max_tokens"]),
            model_name=str(raw["model_name"]),
        )


@dataclass(frozen=True)
class VectorRef:
    """One vector of a request: a catalog name and its fingerprint, or an ad-hoc `sae:<layer>:<feature>`."""

    name: str
    strength: float
    fingerprint: str = ""

    @property
    def adhoc(self) -> tuple[int, int] | None:
        """(layer, feature) of an ad-hoc single-feature vector, else None."""
        m = _ADHOC.fullmatch(self.name)
        return (int(m.group(1)), int(m.group(2))) if m else None


@dataclass(frozen=True)
class RequestSteer:
    """A request's steering as it travels to the workers."""

    vectors: tuple[VectorRef, ...]
    apply: ApplyPhase | None = None

    def to_args(self) -> dict[str, Any]:
        """The `extra_args` entry."""
        return {
            ARGS_KEY: {
                "vectors": [[v.name, v.strength, v.fingerprint] for v in self.vectors],
                "apply": self.apply,
            }
        }

    @classmethod
    def from_args(cls, extra_args: Mapping[str, Any] | None) -> RequestSteer | None:
        """The steering in a request's `extra_args`; None for an unsteered request."""
        raw = (extra_args or {}).get(ARGS_KEY)
        if not raw or not raw.get("vectors"):
            return None
        refs = tuple(VectorRef(str(n), float(s), str(f)) for n, s, f in raw["vectors"])
        apply = raw.get("apply")
        if apply not in (None, "prompt", "generation", "both"):
            raise ValueError(f"apply must be prompt, generation or both, got {apply!r}")
        return cls(refs, apply)

    @property
    def key(self) -> tuple[object, ...]:
        """Identity of the config (requests with equal keys share one slot)."""
        return (tuple(sorted((v.name, v.fingerprint, v.strength) for v in self.vectors)), self.apply)
