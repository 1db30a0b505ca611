"""Typed errors of the vectors package.

Every failure that concerns one vector file names the file and the problem, so a catalog can report it and a
server can turn it into a clear message without parsing strings.
"""

from __future__ import annotations

from pathlib import Path


class SteerError(Exception):
    """Base class of every error raised by `vectors`."""


class InvalidVectorName(SteerError, ValueError):
    """A vector name that does not match `NAME_PATTERN` (it could escape the catalog or be ambiguous)."""


class VectorFileError(SteerError):
    """A problem with one vector file; `str()` is ``"<path>: <problem>"``."""

    def __init__(self, path: str | Path, problem: str) -> None:
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")

    def __reduce__(self) -> tuple[type, tuple[str, str]]:
        return (type(self), (self.path, self.problem))


class VectorFormatError(VectorFileError):
    """The file is not a valid steering vector (corrupt, truncated, bad schema, bad shape, dtype, NaN, ...)."""


class VectorCompatibilityError(VectorFileError):
    """The file is a valid vector but does not fit the model or SAE in use."""


class SaeLoadError(SteerError):
    """An SAE could not be loaded (missing folder, unsupported architecture, hub unreachable offline, ...)."""


class UnknownVector(SteerError, KeyError):
    """No vector of that name in the catalog."""

    def __init__(self, name: str) -> None:
        self.name = name
        super().__init__(name)

    def __str__(self) -> str:
        return f"unknown steering vector {self.name!r}"
