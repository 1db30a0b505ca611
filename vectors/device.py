"""Where a model runs and in which precision: one rule for `steer serve`, `steer train` and `steer eval`.

`auto` picks CUDA, then MPS, then the CPU; an `auto` dtype is bfloat16 on a GPU that supports it (else
float16) and float32 elsewhere (bf16 matmuls on a CPU are slow and gain nothing but memory). The commands read
`STEER_DEVICE` / `STEER_DTYPE` when no flag is given, so one environment configures serving and training alike.
"""

from __future__ import annotations

import os
import platform
from pathlib import Path

import torch

DEVICE_ENV = "STEER_DEVICE"
DTYPE_ENV = "STEER_DTYPE"

DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "float64": torch.float64,
}


def resolve_device(device: str) -> torch.device:
    """`auto` → cuda, mps or cpu (the first available); anything else as torch spells it (CUDA must exist)."""
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    resolved = torch.device(device)
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(
            f"device {device!r}: no CUDA device is visible (or this torch is a CPU build); use auto or cpu"
        )
    return resolved


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """`auto` → bfloat16 (float16 without bf16 support) on CUDA, float32 elsewhere; else the named dtype."""
    if dtype == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32
    try:
        return DTYPES[dtype]
    except KeyError:
        raise ValueError(f"unknown dtype {dtype!r} (choose from auto, {', '.join(DTYPES)})") from None


def requested(flag: str | None, env: str) -> str:
    """A command's device or dtype request: the flag, else the environment variable, else `auto`."""
    return flag or os.environ.get(env) or "auto"


def dtype_name(dtype: torch.dtype) -> str:
    """`torch.bfloat16` → `bfloat16` (the spelling the flags and metadata use)."""
    return str(dtype).removeprefix("torch.")


__all__ = ["DEVICE_ENV", "DTYPES", "DTYPE_ENV", "dtype_name", "requested", "resolve_device", "resolve_dtype"]


def cpu_name() -> str:
    """The CPU's model name ("AMD EPYC", "Intel Xeon ..."): floating point differs between CPU kinds, so every
    figure a build or a benchmark records names the CPU it came from."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()
