"""What the real-client tests share with their fixtures: the country whose vector the culture server serves,
and what the `culture` fixture yields."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

COUNTRY = "morocco"
VECTOR = f"culture/{COUNTRY}"


@dataclass(frozen=True)
class Culture:
    root: Path
    catalog: Path
    url: str
    model_id: str  # the served base id
