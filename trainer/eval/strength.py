"""Strength choice: `strength_range` (retention within 2 points of unsteered, widened to include 1) and
`default_strength` (best validation accuracy among strengths 95 % sure to lose under 3 % of the facts).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

TRAINED_STRENGTH = (
    1.0  # every trainer method's vector is the shift it was trained (or estimated) to apply at 1
)


RANGE_TOLERANCE = 0.02  # strength_range: retention within 2 points of unsteered


RETENTION_BOUND = 0.03  # default strength: 95 % sure that it loses under 3 % of the neutral facts


def strength_range(
    retention: Mapping[float, float],
    base: float,
    tolerance: float = RANGE_TOLERANCE,
    include: Sequence[float] = (TRAINED_STRENGTH,),
) -> tuple[float, float]:
    """The contiguous range of swept strengths around 0 whose retention stays within `tolerance` of `base`,
    widened to contain every strength of `include` (what the vector was trained at is never refused)."""
    ok = {s: r >= base - tolerance - 1e-12 for s, r in retention.items()}
    ok[0.0] = True
    pos = sorted(s for s in ok if s >= 0)
    neg = sorted((s for s in ok if s <= 0), reverse=True)
    hi = lo = 0.0
    for s in pos:
        if not ok[s]:
            break
        hi = s
    for s in neg:
        if not ok[s]:
            break
        lo = s
    return min([lo, *include]), max([hi, *include])


def default_strength(
    accuracy: Mapping[float, float],
    lost_upper: Mapping[float, float],
    bound: float = RETENTION_BOUND,
    within: tuple[float, float] | None = None,
) -> float:
    """The strength with the best (validation) accuracy among those whose share of neutral facts lost has a 95 %
    upper bound (`lost_upper`, Wilson) of at most `bound`, inside `within` when given; ties go to the gentler
    strength; 0 when none qualifies. Strengths missing from `lost_upper` (no neutral facts) qualify."""
    lo, hi = within if within is not None else (-math.inf, math.inf)
    ok = [s for s in accuracy if lo <= s <= hi and (s == 0 or lost_upper.get(s, 0.0) <= bound + 1e-12)]
    if not ok:
        return 0.0
    return max(ok, key=lambda s: (round(accuracy[s], 9), -abs(s), s))
