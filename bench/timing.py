"""Interleaved timing (A B C A B C …) and the statistics the reports use."""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from typing import TypeVar

import torch

T = TypeVar("T")


def synchronizer(device: torch.device | str) -> Callable[[], None]:
    """A function that waits for queued device work (a no-op on CPU), to call before reading a clock."""
    dev = torch.device(device)
    if dev.type == "cuda":
        return lambda: torch.cuda.synchronize(dev)
    return lambda: None


def now() -> float:
    return time.perf_counter()


def interleave(cases: Mapping[str, Callable[[], T]], repeats: int, warmup: int = 1) -> dict[str, list[T]]:
    """Run every case once per round for `warmup` untimed and `repeats` kept rounds.

    The start of each round rotates through the cases, so slow drift of a shared machine (other jobs, clock
    changes) spreads over all cases instead of biasing the one that always runs first.
    """
    names = list(cases)
    for _ in range(warmup):
        for name in names:
            cases[name]()
    out: dict[str, list[T]] = {name: [] for name in names}
    for r in range(repeats):
        shift = r % len(names)
        for name in names[shift:] + names[:shift]:
            out[name].append(cases[name]())
    return out


def median(xs: Sequence[float]) -> float:
    return float(statistics.median(xs)) if xs else math.nan


def percentile(xs: Sequence[float], q: float) -> float:
    """The q-th percentile (0–100), linear interpolation between order statistics."""
    if not xs:
        return math.nan
    s = sorted(xs)
    pos = (len(s) - 1) * q / 100.0
    lo, hi = math.floor(pos), math.ceil(pos)
    return float(s[lo] + (s[hi] - s[lo]) * (pos - lo))


def paired_ratio(num: Sequence[float], den: Sequence[float]) -> float:
    """Median over rounds of num[r] / den[r]: each round's pair ran close in time, so noise mostly cancels."""
    ratios = [a / b for a, b in zip(num, den, strict=True) if b > 0]
    return median(ratios)


def summary(xs: Sequence[float], digits: int = 4) -> dict[str, float | list[float]]:
    """Median, min, max and the raw samples (rounded), for the JSON result."""
    return {
        "median": round(median(xs), digits),
        "min": round(min(xs), digits) if xs else math.nan,
        "max": round(max(xs), digits) if xs else math.nan,
        "samples": [round(x, digits) for x in xs],
    }
