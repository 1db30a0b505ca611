"""Reading and writing vector files (safetensors + the ``steer`` JSON header). Never pickle.

Writes are atomic: a temporary file in the same directory (name ending in ``.tmp``, so a catalog scan ignores
it) is fsynced and then `os.replace`d over the target, so a reader sees the old file or the new one, never half.
Reads validate everything that can be checked without a model; `catalog.check_compatible` does the rest.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from safetensors import safe_open
from safetensors.torch import save

from vectors.access import default_mode, not_readable
from vectors.errors import VectorFileError, VectorFormatError
from vectors.metadata import VectorMetadata
from vectors.vector import SteeringVector

META_KEY = "steer"
MAX_FILE_BYTES = 1 << 31  # a vector is at most d_sae * 12 bytes; anything this big is not a vector


def _schema_problem(err: ValidationError) -> str:
    parts = []
    for e in err.errors()[:3]:
        loc = ".".join(str(x) for x in e["loc"]) or "steer"
        parts.append(f"{loc}: {e['msg']}")
    more = f" (+{err.error_count() - 3} more)" if err.error_count() > 3 else ""
    return "invalid metadata: " + "; ".join(parts) + more


def _parse_metadata(path: Path, header: dict[str, str] | None) -> VectorMetadata:
    if not header or META_KEY not in header:
        raise VectorFormatError(path, f"no '{META_KEY}' entry in the safetensors metadata")
    try:
        raw = json.loads(header[META_KEY])
    except json.JSONDecodeError as e:
        raise VectorFormatError(path, f"'{META_KEY}' metadata is not valid JSON ({e.msg})") from None
    if not isinstance(raw, dict):
        raise VectorFormatError(path, f"'{META_KEY}' metadata must be a JSON object")
    try:
        return VectorMetadata.model_validate(raw)
    except ValidationError as e:
        raise VectorFormatError(path, _schema_problem(e)) from None


def _open(path: Path) -> Any:
    try:
        size = path.stat().st_size
    except OSError as e:
        raise VectorFormatError(path, f"cannot read file ({e.strerror})") from None
    if size > MAX_FILE_BYTES:
        raise VectorFormatError(path, f"file too large for a vector ({size} bytes)")
    if not os.access(path, os.R_OK):
        raise VectorFileError(path, not_readable(path))
    try:
        return safe_open(str(path), framework="pt", device="cpu")
    except Exception as e:  # safetensors raises its own error types for corrupt or truncated files
        raise VectorFormatError(path, f"not a readable safetensors file ({_one_line(e)})") from None


def _one_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0][:200] if text else type(e).__name__


def read_metadata(path: str | Path) -> VectorMetadata:
    """The validated metadata of a vector file, reading only its header."""
    path = Path(path)
    with _open(path) as f:
        return _parse_metadata(path, f.metadata())


def load_vector(path: str | Path) -> SteeringVector:
    """Load and fully validate a vector file; any problem raises `VectorFormatError` naming the file."""
    path = Path(path)
    with _open(path) as f:
        meta = _parse_metadata(path, f.metadata())
        keys = set(f.keys())
        expected = {"indices", "values"} if meta.space == "sae" else {"vector"}
        if keys != expected:
            raise VectorFormatError(
                path, f"space '{meta.space}' needs tensors {sorted(expected)}, file has {sorted(keys)}"
            )
        try:
            tensors = {k: f.get_tensor(k) for k in keys}
        except Exception as e:
            raise VectorFormatError(path, f"cannot read tensors ({_one_line(e)})") from None
    try:
        return SteeringVector(
            meta=meta,
            indices=tensors.get("indices"),
            values=tensors.get("values"),
            dense=tensors.get("vector"),
        )
    except ValueError as e:
        raise VectorFormatError(path, str(e)) from None


def to_bytes(vector: SteeringVector) -> bytes:
    """The safetensors serialisation of `vector` (what `save_vector` writes)."""
    if vector.space == "sae":
        assert vector.indices is not None and vector.values is not None
        tensors = {"indices": vector.indices.clone(), "values": vector.values.clone()}
    else:
        assert vector.dense is not None
        tensors = {"vector": vector.dense.clone()}
    return save(tensors, metadata={META_KEY: vector.meta.to_json()})


def write_atomic(path: str | Path, data: bytes) -> None:
    """Write `data` to `path` atomically (temp file in the same directory, fsync, `os.replace`), readable
    by others as the umask allows."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, default_mode())  # mkstemp's 0600 would hide it from a server run as another user
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def save_vector(vector: SteeringVector, path: str | Path) -> Path:
    """Write `vector` to `path` atomically; returns the path."""
    write_atomic(path, to_bytes(vector))
    return Path(path)


def update_metadata(path: str | Path, **fields: Any) -> SteeringVector:
    """Replace metadata fields of an existing vector file (validated, atomic rewrite); returns the new vector."""
    path = Path(path)
    vector = load_vector(path)
    try:
        new = vector.with_meta(**fields)
    except ValidationError as e:
        raise VectorFormatError(path, _schema_problem(e)) from None
    except ValueError as e:
        raise VectorFormatError(path, str(e)) from None
    save_vector(new, path)
    return new
