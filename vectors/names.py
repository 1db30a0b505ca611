"""Vector names and where they live in a catalog.

A name is ``namespace/leaf`` (any number of ``/``-separated segments of ``[a-z0-9_-]``). Nothing else is
accepted, so a name can never contain ``..``, a drive, a backslash or an absolute path, and can never escape
the catalog root.
"""

from __future__ import annotations

import re
from pathlib import Path

from vectors.errors import InvalidVectorName

NAME_PATTERN = r"[a-z0-9_-]+(/[a-z0-9_-]+)*"
SUFFIX = ".safetensors"
MAX_NAME_LENGTH = 200

_NAME_RE = re.compile(NAME_PATTERN)


def validate_name(name: str) -> str:
    """Return `name` unchanged if it is a valid vector name, else raise `InvalidVectorName`."""
    if not isinstance(name, str) or len(name) > MAX_NAME_LENGTH or not _NAME_RE.fullmatch(name):
        raise InvalidVectorName(
            f"invalid vector name {name!r}: expected segments of [a-z0-9_-] joined by '/', "
            f"at most {MAX_NAME_LENGTH} characters"
        )
    return name


def vector_path(catalog_root: str | Path, name: str) -> Path:
    """The file of vector `name` under `catalog_root`: ``<root>/<ns>/<leaf>.safetensors``."""
    return Path(catalog_root).joinpath(*validate_name(name).split("/")).with_suffix(SUFFIX)


def name_from_path(root: str | Path, path: str | Path) -> str:
    """The vector name of `path` relative to `root` (inverse of `vector_path`); `InvalidVectorName` if none."""
    root, path = Path(root), Path(path)
    try:
        rel = path.relative_to(root)
    except ValueError:
        raise InvalidVectorName(f"{path} is not inside the catalog {root}") from None
    if rel.suffix != SUFFIX:
        raise InvalidVectorName(f"{rel.as_posix()!r} does not end in {SUFFIX}")
    return validate_name(rel.with_suffix("").as_posix())
