"""The catalog: a directory of vector files, validated against the model and SAEs in use.

`refresh()` rescans the tree and reloads only files whose (mtime, size, inode) changed; every file that cannot
be served is listed in `skipped` (relative path -> reason) instead of failing the whole catalog, and so is a
symlink whose target lies outside the root (file links that stay inside are followed; linked directories are
never walked). Readers see immutable snapshots: a refresh builds new dicts and swaps one attribute, so
`get`/`vectors` are safe to call from other threads while a refresh runs.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from vectors.errors import InvalidVectorName, UnknownVector, VectorCompatibilityError, VectorFileError
from vectors.io import load_vector
from vectors.names import SUFFIX, name_from_path, validate_name
from vectors.sae import SparseCoder
from vectors.slots import coders_by_layer
from vectors.vector import SteeringVector


@dataclass(frozen=True)
class ModelInfo:
    """What a vector must match about the served model. `name` is informational (fine-tunes share vectors)."""

    name: str
    hidden_size: int
    num_layers: int


def model_info_from_config(cfg: Any) -> ModelInfo:
    """`ModelInfo` of a transformers config (uses the text config of multimodal models)."""
    text = cfg.get_text_config(decoder=True) if hasattr(cfg, "get_text_config") else cfg
    name = getattr(cfg, "name_or_path", None) or getattr(cfg, "_name_or_path", None) or ""
    return ModelInfo(
        name=str(name), hidden_size=int(text.hidden_size), num_layers=int(text.num_hidden_layers)
    )


def check_compatible(
    vector: SteeringVector,
    model_info: ModelInfo,
    coders: dict[int, SparseCoder] | Any,
    path: str | Path | None = None,
) -> None:
    """Raise `VectorCompatibilityError` if `vector` cannot steer this model with these SAEs (layer -> coder)."""
    where = path if path is not None else vector.name
    meta = vector.meta
    if (meta.model.hidden_size, meta.model.num_layers) != (model_info.hidden_size, model_info.num_layers):
        raise VectorCompatibilityError(
            where,
            f"wrong model: vector is for hidden_size={meta.model.hidden_size}, num_layers={meta.model.num_layers} "
            f"({meta.model.name}); served model has {model_info.hidden_size}, {model_info.num_layers}",
        )
    if meta.space != "sae":
        return
    assert meta.sae is not None
    coder = coders_by_layer(coders).get(meta.layer)
    if coder is None:
        raise VectorCompatibilityError(
            where, f"SAE-space vector at layer {meta.layer}, but no SAE is loaded there"
        )
    if meta.sae.d_sae != coder.d_sae:
        raise VectorCompatibilityError(
            where,
            f"wrong SAE: vector is for d_sae={meta.sae.d_sae}, the SAE at layer {meta.layer} has {coder.d_sae}",
        )
    if meta.sae.architecture != coder.architecture:
        raise VectorCompatibilityError(
            where,
            f"wrong SAE: vector is for a {meta.sae.architecture} SAE, the SAE at layer {meta.layer} is "
            f"{coder.architecture}",
        )


Stamp = tuple[int, int, int]

LINK_OUTSIDE = "symlink whose target lies outside the catalog root: not followed"
LINK_LOOP = "symlink loop: not followed"


def _link_target(path: Path, real_root: Path) -> Path | str:
    """`path` if it is no symlink, else its final target if that lies inside `real_root`; else why not.

    Whoever may write the catalog is trusted, but a link must not turn the catalog into a reader of arbitrary
    files (a mounted volume, `/etc`): the target is checked once, and that resolved path is the one read.
    """
    if not path.is_symlink():
        return path
    try:
        target = path.resolve()
    except (OSError, RuntimeError):  # a loop (RuntimeError up to Python 3.12)
        return LINK_LOOP
    return target if target.is_relative_to(real_root) else LINK_OUTSIDE


@dataclass(frozen=True)
class _Entry:
    stamp: Stamp
    vector: SteeringVector | None
    reason: str | None


@dataclass(frozen=True)
class _Snapshot:
    entries: dict[str, _Entry] = field(default_factory=dict)  # relative path -> entry
    by_name: MappingProxyType[str, SteeringVector] = field(default_factory=lambda: MappingProxyType({}))
    skipped: MappingProxyType[str, str] = field(default_factory=lambda: MappingProxyType({}))


class Catalog:
    """Named vectors under `root` that fit `model_info` and `coders`; call `refresh()` to (re)scan."""

    def __init__(self, root: str | Path, model_info: ModelInfo, coders: Any = None) -> None:
        self.root = Path(root)
        self.model_info = model_info
        self.coders = coders_by_layer(coders)
        self._snap = _Snapshot()
        self._lock = threading.Lock()  # serialises refreshes; readers never take it

    # --- reading (lock-free: one attribute read per call) -------------------------------------------------
    def get(self, name: str) -> SteeringVector:
        """The vector called `name`; `UnknownVector` if absent, `InvalidVectorName` if not a name."""
        validate_name(name)
        try:
            return self._snap.by_name[name]
        except KeyError:
            raise UnknownVector(name) from None

    def vectors(self) -> list[SteeringVector]:
        """All loadable vectors, sorted by name."""
        by_name = self._snap.by_name
        return [by_name[n] for n in sorted(by_name)]

    @property
    def skipped(self) -> dict[str, str]:
        """Files that could not be served: relative path -> reason."""
        return dict(self._snap.skipped)

    def __contains__(self, name: object) -> bool:
        return name in self._snap.by_name

    def __len__(self) -> int:
        return len(self._snap.by_name)

    # --- scanning ------------------------------------------------------------------------------------------
    def _scan(self) -> tuple[dict[str, tuple[Path, Path, Stamp]], dict[str, str]]:
        """(relative path -> (path, file to read, stamp), relative path -> reason refused) of the tree."""
        found: dict[str, tuple[Path, Path, Stamp]] = {}
        refused: dict[str, str] = {}
        if not self.root.is_dir():
            return found, refused
        real_root = self.root.resolve()
        for dirpath, dirnames, filenames in os.walk(self.root, followlinks=False):
            here = Path(dirpath)
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            # a linked directory is never walked (followlinks=False); one that leaves the root is reported
            for d in dirnames:
                if isinstance(problem := _link_target(here / d, real_root), str):
                    refused[self._rel(here / d)] = problem
            for fn in filenames:
                if fn.startswith(".") or not fn.endswith(SUFFIX):
                    continue  # hidden files and in-progress atomic writes (".<name>.<rand>.tmp")
                path = here / fn
                source = _link_target(path, real_root)
                if isinstance(source, str):
                    refused[self._rel(path)] = source
                    continue
                try:
                    st = source.stat()
                except OSError:
                    continue  # vanished between listing and stat
                found[self._rel(path)] = (path, source, (st.st_mtime_ns, st.st_size, st.st_ino))
        return found, refused

    def _rel(self, path: Path) -> str:
        return path.relative_to(self.root).as_posix()

    def _load(self, path: Path, source: Path, stamp: Stamp) -> _Entry:
        """The entry of the file at `path` (its name), read from `source` (the same file, links resolved)."""
        try:
            name = name_from_path(self.root, path)
            vector = load_vector(source)
            if vector.name != name:
                raise VectorCompatibilityError(
                    path, f"name mismatch: metadata says {vector.name!r}, the path means {name!r}"
                )
            check_compatible(vector, self.model_info, self.coders, path)
        except InvalidVectorName as e:
            return _Entry(stamp, None, f"bad name: {e}")
        except VectorFileError as e:
            return _Entry(stamp, None, e.problem)
        return _Entry(stamp, vector, None)

    def refresh(self) -> bool:
        """Rescan the tree; returns True if the set of vectors or skipped files changed."""
        with self._lock:
            old = self._snap
            entries: dict[str, _Entry] = {}
            found, refused = self._scan()
            for rel, (path, source, stamp) in found.items():
                prev = old.entries.get(rel)
                if prev is None or prev.stamp != stamp:
                    prev = self._load(path, source, stamp)
                entries[rel] = prev
            by_name: dict[str, SteeringVector] = {}
            skipped: dict[str, str] = dict(refused)
            for rel in sorted(entries):
                entry = entries[rel]
                if entry.vector is not None:
                    by_name[entry.vector.name] = entry.vector
                else:
                    skipped[rel] = entry.reason or "unknown problem"
            new = _Snapshot(entries, MappingProxyType(by_name), MappingProxyType(skipped))
            changed = (
                skipped != dict(old.skipped)
                or by_name.keys() != old.by_name.keys()
                or any(old.by_name[n] is not v for n, v in by_name.items())
            )
            self._snap = new
            return changed
