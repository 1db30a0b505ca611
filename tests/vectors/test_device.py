"""`vectors.device`: the one device/dtype rule of `steer serve`, `steer train` and `steer eval`."""

from __future__ import annotations

import pytest
import torch

from vectors.device import DEVICE_ENV, DTYPE_ENV, dtype_name, requested, resolve_device, resolve_dtype


def test_flag_then_environment_then_auto(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(DEVICE_ENV, raising=False)
    assert requested(None, DEVICE_ENV) == "auto"
    monkeypatch.setenv(DEVICE_ENV, "cpu")
    assert requested(None, DEVICE_ENV) == "cpu" and requested("cuda:1", DEVICE_ENV) == "cuda:1"
    monkeypatch.setenv(DTYPE_ENV, "bfloat16")
    assert requested(None, DTYPE_ENV) == "bfloat16"


def test_auto_is_float32_off_cuda_and_names_round_trip() -> None:
    cpu = torch.device("cpu")
    assert resolve_dtype("auto", cpu) == torch.float32
    expected = (
        "cuda" if torch.cuda.is_available() else ("mps" if torch.backends.mps.is_available() else "cpu")
    )
    assert resolve_device("auto").type == expected and resolve_device("cpu") == cpu
    for name in ("float32", "float16", "bfloat16", "float64"):
        assert dtype_name(resolve_dtype(name, cpu)) == name
    with pytest.raises(ValueError, match="unknown dtype 'half'"):
        resolve_dtype("half", cpu)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_cuda_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="no CUDA device is visible"):
        resolve_device("cuda")
