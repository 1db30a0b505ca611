"""Preference data: (prompt, chosen, rejected) rows from JSONL, CSV, Parquet or a `datasets` folder.

Loading is separate from tokenisation (`trainer.tokens`): this module only reads rows, renames the
three columns the trainer needs, applies `--where col=value` filters and fails loudly on anything
that would otherwise train on garbage (missing columns, empty data, empty or non-text cells).
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vectors.errors import SteerError


class DataError(SteerError, ValueError):
    """Preference data that cannot be used as given; the message names the source and the problem."""


@dataclass(frozen=True)
class PreferencePair:
    """One training example; `extra` keeps the other columns (topic, split, ...) for filters and reports."""

    prompt: str
    chosen: str
    rejected: str
    extra: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Columns:
    """Which source columns hold the prompt, the preferred and the dispreferred response."""

    prompt: str = "prompt"
    chosen: str = "chosen"
    rejected: str = "rejected"


def parse_where(items: Iterable[str]) -> dict[str, str]:
    """Parse `col=value` filters (from repeated `--where`); several filters must all hold."""
    out: dict[str, str] = {}
    for item in items:
        col, sep, value = item.partition("=")
        if not sep or not col.strip():
            raise DataError(f"--where expects col=value, got {item!r}")
        out[col.strip()] = value.strip()
    return out


def read_rows(path: str | Path) -> list[dict[str, Any]]:
    """All rows of a JSONL / JSON / CSV / Parquet file or a `datasets.save_to_disk` folder, as dicts."""
    p = Path(path)
    if not p.exists():
        raise DataError(f"{p}: no such file or folder")
    if p.is_dir():
        return _read_datasets_folder(p)
    suffix = p.suffix.lower()
    if suffix in {".jsonl", ".ndjson"}:
        return _read_jsonl(p)
    if suffix == ".json":
        data = json.loads(p.read_text(encoding="utf-8"))
        if not isinstance(data, list) or not all(isinstance(r, dict) for r in data):
            raise DataError(f"{p}: a .json data file must hold a list of objects")
        return data
    if suffix in {".csv", ".tsv"}:
        import pandas as pd

        frame = pd.read_csv(p, sep="\t" if suffix == ".tsv" else ",", keep_default_na=False)
        return frame.to_dict(orient="records")
    if suffix in {".parquet", ".pq"}:
        import pandas as pd

        return pd.read_parquet(p).to_dict(orient="records")
    raise DataError(
        f"{p}: unknown data format {suffix!r} (use .jsonl, .json, .csv, .parquet or a datasets folder)"
    )


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    rows = []
    with path.open(encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(f"{path}:{lineno}: invalid JSON ({exc.msg})") from None
            if not isinstance(row, dict):
                raise DataError(f"{path}:{lineno}: each line must be a JSON object")
            rows.append(row)
    return rows


def _read_datasets_folder(path: Path) -> list[dict[str, Any]]:
    import datasets

    try:
        ds = datasets.load_from_disk(str(path))
    except FileNotFoundError as exc:
        raise DataError(f"{path}: not a datasets.save_to_disk folder ({exc})") from None
    if isinstance(ds, datasets.DatasetDict):
        # A DatasetDict keeps its split names: expose them as a `split` column so `--where split=..` works.
        rows = []
        for split, part in ds.items():
            rows.extend({**row, "split": row.get("split", split)} for row in part)
        return rows
    return list(ds)


def _matches(value: Any, wanted: str) -> bool:
    """Filter comparison on the text form; booleans also match true/false/1/0 in any case."""
    if isinstance(value, bool):
        return wanted.lower() in ({"true", "1", "yes"} if value else {"false", "0", "no"})
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        try:
            return float(wanted) == float(value)
        except ValueError:
            return False
    return str(value) == wanted


def filter_rows(rows: Sequence[Mapping[str, Any]], where: Mapping[str, str], source: str) -> list[dict]:
    """Rows for which every `col=value` filter holds; a filter on an absent column is an error."""
    if not where:
        return [dict(r) for r in rows]
    columns = set().union(*(r.keys() for r in rows)) if rows else set()
    missing = sorted(set(where) - columns)
    if missing:
        raise DataError(
            f"{source}: --where names column(s) {missing} not in the data (columns: {sorted(columns)})"
        )
    return [dict(r) for r in rows if all(_matches(r.get(c), v) for c, v in where.items())]


def _text(value: Any) -> str | None:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    return value if isinstance(value, str) else None


def to_pairs(rows: Sequence[Mapping[str, Any]], columns: Columns, source: str) -> list[PreferencePair]:
    """Turn rows into pairs; every row must hold non-empty text in the three columns."""
    if not rows:
        raise DataError(f"{source}: no rows (after filters)")
    names = (columns.prompt, columns.chosen, columns.rejected)
    present = set().union(*(r.keys() for r in rows))
    missing = [c for c in names if c not in present]
    if missing:
        raise DataError(
            f"{source}: missing column(s) {missing}; columns present: {sorted(present)} "
            "(rename with --prompt-col / --chosen-col / --rejected-col)"
        )
    pairs = []
    for i, row in enumerate(rows):
        texts = [_text(row.get(c)) for c in names]
        for col, text in zip(names, texts, strict=True):
            if text is None:
                raise DataError(
                    f"{source}: row {i}: column {col!r} is missing or not text ({row.get(col)!r})"
                )
        prompt, chosen, rejected = texts
        if not chosen.strip() or not rejected.strip():
            raise DataError(f"{source}: row {i}: empty chosen or rejected response")
        extra = {k: v for k, v in row.items() if k not in names}
        pairs.append(PreferencePair(prompt=prompt, chosen=chosen, rejected=rejected, extra=extra))
    return pairs


def load_pairs(
    path: str | Path, *, columns: Columns | None = None, where: Mapping[str, str] | None = None
) -> list[PreferencePair]:
    """Read, filter and validate preference pairs from `path` (see module doc for formats)."""
    source = str(path)
    rows = read_rows(path)
    if not rows:
        raise DataError(f"{source}: the data is empty")
    rows = filter_rows(rows, where or {}, source)
    if not rows:
        raise DataError(f"{source}: no rows match the filters {dict(where or {})}")
    return to_pairs(rows, columns or Columns(), source)


def pairs_hash(pairs: Sequence[PreferencePair]) -> str:
    """Content hash of the training pairs (order-sensitive), stored in the vector's metadata."""
    h = hashlib.sha256()
    for p in pairs:
        h.update(json.dumps([p.prompt, p.chosen, p.rejected], ensure_ascii=False).encode())
        h.update(b"\n")
    return "sha256:" + h.hexdigest()[:16]


__all__ = [
    "Columns",
    "DataError",
    "PreferencePair",
    "filter_rows",
    "load_pairs",
    "pairs_hash",
    "parse_where",
    "read_rows",
    "to_pairs",
]
