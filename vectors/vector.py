"""`SteeringVector`: one validated vector (metadata + tensors), immutable.

Equality and hashing go by a fingerprint of everything that changes how the vector acts, so two loads of the same file are the same key in a
``{vector: strength}`` config and identical configs share a table row.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import torch

from vectors.metadata import Space, VectorMetadata


def check_tensors(
    meta: VectorMetadata,
    indices: torch.Tensor | None,
    values: torch.Tensor | None,
    dense: torch.Tensor | None,
) -> None:
    """Raise `ValueError` describing the first way the tensors disagree with the format or with `meta`."""
    if meta.space == "sae":
        if indices is None or values is None or dense is not None:
            raise ValueError("an SAE-space vector has exactly the tensors 'indices' and 'values'")
        if indices.dtype != torch.int64:
            raise ValueError(f"'indices' must be int64, got {indices.dtype}")
        if values.dtype != torch.float32:
            raise ValueError(f"'values' must be float32, got {values.dtype}")
        if indices.dim() != 1 or values.dim() != 1 or indices.shape != values.shape:
            raise ValueError(
                f"'indices' and 'values' must be 1-D of equal length, got {list(indices.shape)} "
                f"and {list(values.shape)}"
            )
        if not bool(torch.isfinite(values).all()):
            raise ValueError("'values' contains NaN or infinite entries")
        if indices.numel():
            assert meta.sae is not None
            if int(indices.min()) < 0 or int(indices.max()) >= meta.sae.d_sae:
                raise ValueError(f"'indices' out of range [0, {meta.sae.d_sae}) (d_sae of the SAE)")
            if indices.numel() > 1 and not bool((indices[1:] > indices[:-1]).all()):
                raise ValueError("'indices' must be sorted and unique")
    else:
        if dense is None or indices is not None or values is not None:
            raise ValueError("a dense vector has exactly the tensor 'vector'")
        if dense.dtype != torch.float32:
            raise ValueError(f"'vector' must be float32, got {dense.dtype}")
        if dense.dim() != 1 or dense.shape[0] != meta.model.hidden_size:
            raise ValueError(
                f"'vector' must have shape [{meta.model.hidden_size}] (hidden_size), got {list(dense.shape)}"
            )
        if not bool(torch.isfinite(dense).all()):
            raise ValueError("'vector' contains NaN or infinite entries")


def _fingerprint(meta: VectorMetadata, *tensors: torch.Tensor | None) -> str:
    """Digest of everything that changes how a vector acts (not `created`, `training`, `eval`)."""
    h = hashlib.sha256()
    acting = meta.model_dump(include={"name", "space", "layer", "hook_name", "sae", "apply"})
    h.update(repr(sorted(acting.items())).encode())
    for t in tensors:
        h.update(b"-" if t is None else t.contiguous().numpy().tobytes() + str(t.dtype).encode())
    return h.hexdigest()[:32]


@dataclass(frozen=True, eq=False)
class SteeringVector:
    """A steering vector: metadata plus either sparse code (`indices`, `values`) or a `dense` d_model vector.

    Tensors are CPU, contiguous, validated on construction (`ValueError` on any problem).
    """

    meta: VectorMetadata
    indices: torch.Tensor | None = None
    values: torch.Tensor | None = None
    dense: torch.Tensor | None = None
    fingerprint: str = field(init=False, repr=False)

    def __post_init__(self) -> None:
        for attr in ("indices", "values", "dense"):
            t = getattr(self, attr)
            if t is not None:
                object.__setattr__(self, attr, t.detach().cpu().contiguous())
        check_tensors(self.meta, self.indices, self.values, self.dense)
        object.__setattr__(
            self, "fingerprint", _fingerprint(self.meta, self.indices, self.values, self.dense)
        )

    # --- constructors -------------------------------------------------------------------------------------
    @classmethod
    def sparse(cls, meta: VectorMetadata, indices: torch.Tensor, values: torch.Tensor) -> SteeringVector:
        """SAE-space vector from (index, value) pairs; sorts them, casts to int64/float32."""
        indices = torch.as_tensor(indices).detach().cpu().to(torch.int64).reshape(-1)
        values = torch.as_tensor(values).detach().cpu().to(torch.float32).reshape(-1)
        if indices.shape == values.shape:
            order = torch.argsort(indices, stable=True)
            indices, values = indices[order], values[order]
        return cls(meta=meta, indices=indices, values=values)

    @classmethod
    def from_code(cls, meta: VectorMetadata, code: torch.Tensor) -> SteeringVector:
        """SAE-space vector from a dense code vector [d_sae] (keeps the non-zero entries)."""
        code = code.detach().cpu().to(torch.float32).reshape(-1)
        if meta.sae is not None and code.shape[0] != meta.sae.d_sae:
            raise ValueError(f"code vector has length {code.shape[0]}, SAE has d_sae={meta.sae.d_sae}")
        idx = torch.nonzero(code).reshape(-1)
        return cls(meta=meta, indices=idx.to(torch.int64), values=code[idx].clone())

    @classmethod
    def dense_vector(cls, meta: VectorMetadata, vector: torch.Tensor) -> SteeringVector:
        """Dense residual-stream vector [d_model]."""
        return cls(meta=meta, dense=torch.as_tensor(vector).detach().cpu().to(torch.float32).reshape(-1))

    # --- views --------------------------------------------------------------------------------------------
    @property
    def name(self) -> str:
        return self.meta.name

    @property
    def space(self) -> Space:
        return self.meta.space

    @property
    def layer(self) -> int:
        return self.meta.layer

    @property
    def nnz(self) -> int:
        """Stored entries of an SAE vector; non-zero entries of a dense one."""
        if self.space == "sae":
            assert self.indices is not None
            return int(self.indices.numel())
        assert self.dense is not None
        return int(torch.count_nonzero(self.dense))

    def code_vector(self, d_sae: int | None = None) -> torch.Tensor:
        """The vector as a dense float32 code [d_sae] (SAE space only)."""
        if self.space != "sae":
            raise ValueError(f"{self.name}: code_vector() needs an SAE-space vector, this one is dense")
        assert self.meta.sae is not None and self.indices is not None and self.values is not None
        d = self.meta.sae.d_sae if d_sae is None else d_sae
        if d != self.meta.sae.d_sae:
            raise ValueError(f"{self.name}: vector is for d_sae={self.meta.sae.d_sae}, asked for {d}")
        out = torch.zeros(d, dtype=torch.float32)
        out[self.indices] = self.values
        return out

    def with_meta(self, **fields: object) -> SteeringVector:
        """Copy with metadata fields replaced (validated)."""
        meta = VectorMetadata.model_validate({**self.meta.model_dump(), **fields})
        return SteeringVector(meta=meta, indices=self.indices, values=self.values, dense=self.dense)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, SteeringVector):
            return NotImplemented
        return self.fingerprint == other.fingerprint

    def __hash__(self) -> int:
        return hash(self.fingerprint)

    def __repr__(self) -> str:
        return f"SteeringVector({self.name!r}, space={self.space}, layer={self.layer}, nnz={self.nnz})"
