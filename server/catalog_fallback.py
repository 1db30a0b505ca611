"""Stand-in for `vectors.catalog` (used only while that module is absent): same interface, same semantics.

Scans `<root>/**/*.safetensors`, loads each with `vectors.io.load_vector`, checks it against the model and SAEs,
and swaps in a new dict on every refresh (never mutating one a reader holds).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vectors.errors import UnknownVector
from vectors.io import load_vector
from vectors.names import name_from_path, validate_name


@dataclass(frozen=True)
class ModelInfo:
    name: str
    hidden_size: int
    num_layers: int


def model_info_from_config(cfg: Any) -> ModelInfo:
    text = cfg.get_text_config(decoder=True) if hasattr(cfg, "get_text_config") else cfg
    return ModelInfo(
        str(getattr(cfg, "name_or_path", "") or ""), int(text.hidden_size), int(text.num_hidden_layers)
    )


def check_compatible(vector: Any, info: ModelInfo, coders: dict[int, Any]) -> None:
    meta = vector.meta
    if meta.model.hidden_size != info.hidden_size or meta.model.num_layers != info.num_layers:
        raise ValueError(
            f"vector is for a model with hidden_size={meta.model.hidden_size}, num_layers={meta.model.num_layers}; "
            f"served model has {info.hidden_size}, {info.num_layers}"
        )
    if meta.space == "sae":
        coder = coders.get(meta.layer)
        if coder is None:
            raise ValueError(f"SAE-space vector at layer {meta.layer}, but no SAE is loaded at that layer")
        if meta.sae is not None and meta.sae.d_sae != coder.d_sae:
            raise ValueError(
                f"vector is for d_sae={meta.sae.d_sae}, the SAE at layer {meta.layer} has {coder.d_sae}"
            )


class Catalog:
    def __init__(self, root: str | Path, model_info: ModelInfo, coders: dict[int, Any]) -> None:
        self.root = Path(root)
        self.model_info = model_info
        self.coders = coders
        self._vectors: dict[str, Any] = {}
        self._stamps: dict[Path, tuple[int, int]] = {}
        self.skipped: dict[str, str] = {}
        self._lock = threading.Lock()

    def refresh(self) -> bool:
        with self._lock:
            files = sorted(self.root.rglob("*.safetensors")) if self.root.is_dir() else []
            stamps = {}
            for f in files:
                try:
                    st = f.stat()
                except OSError:
                    continue
                stamps[f] = (st.st_mtime_ns, st.st_size)
            if stamps == self._stamps:
                return False
            old = {v_path: v for v_path, v in getattr(self, "_by_path", {}).items()}
            by_path: dict[Path, Any] = {}
            vectors: dict[str, Any] = {}
            skipped: dict[str, str] = {}
            for f, stamp in stamps.items():
                rel = f.relative_to(self.root).as_posix()
                try:
                    name = name_from_path(self.root, f)
                    if f in old and self._stamps.get(f) == stamp:
                        vector = old[f]
                    else:
                        vector = load_vector(f)
                    if vector.name != name:
                        raise ValueError(f"file declares name {vector.name!r}, its path says {name!r}")
                    check_compatible(vector, self.model_info, self.coders)
                except Exception as exc:
                    skipped[rel] = str(getattr(exc, "problem", None) or exc)
                    continue
                by_path[f] = vector
                vectors[name] = vector
            self._by_path = by_path
            self._vectors = vectors
            self.skipped = skipped
            self._stamps = stamps
            return True

    def get(self, name: str) -> Any:
        validate_name(name)
        try:
            return self._vectors[name]
        except KeyError:
            raise UnknownVector(name) from None

    def vectors(self) -> list[Any]:
        return list(self._vectors.values())
