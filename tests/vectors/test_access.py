"""File modes of what the project writes (as the umask allows, never narrower), and the unreadable-file message."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from vectors.access import check_readable, default_mode, not_readable, share_readable, unreadable_file
from vectors.io import write_atomic


@pytest.fixture(params=[0o022, 0o027, 0o077])
def umask(request: pytest.FixtureRequest) -> Iterator[int]:
    old = os.umask(request.param)
    try:
        yield request.param
    finally:
        os.umask(old)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_default_mode_follows_the_umask(umask: int) -> None:
    assert default_mode() == 0o666 & ~umask
    assert default_mode(directory=True) == 0o777 & ~umask


def test_write_atomic_gives_what_open_would(tmp_path: Path, umask: int) -> None:
    write_atomic(tmp_path / "a.json", b"{}")
    (tmp_path / "b.json").write_bytes(b"{}")
    assert _mode(tmp_path / "a.json") == _mode(tmp_path / "b.json") == 0o666 & ~umask


def test_share_readable_widens_to_the_umask_and_never_narrows(tmp_path: Path, umask: int) -> None:
    root = tmp_path / "world"
    (root / "model").mkdir(parents=True)
    private = root / "model" / "model.safetensors"
    private.write_bytes(b"x")
    private.chmod(0o600)
    (root / "model").chmod(0o700)
    wide = root / "run.sh"
    wide.write_bytes(b"x")
    wide.chmod(0o755)
    (root / "link").symlink_to(private)
    share_readable(root)
    assert _mode(private) == 0o600 | (0o666 & ~umask)
    assert _mode(root / "model") == 0o700 | (0o777 & ~umask)
    assert _mode(wide) == 0o755 | (0o666 & ~umask)  # bits already set are kept


def test_not_readable_names_the_user_and_the_mode(tmp_path: Path) -> None:
    path = tmp_path / "model.safetensors"
    path.write_bytes(b"x")
    path.chmod(0o600)
    message = not_readable(path)
    assert message.startswith(f"permission denied: not readable by uid {os.geteuid()}")
    assert message.endswith(f"(mode 0600, owner uid {os.getuid()})")


@pytest.mark.skipif(
    os.geteuid() == 0,
    reason="root reads every file; tests/deploy/test_container.py checks this as the image's uid 10001",
)
def test_unreadable_file_is_found_and_reported(tmp_path: Path) -> None:
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "config.json").write_text("{}")
    weights = tmp_path / "model" / "model.safetensors"
    weights.write_bytes(b"x")
    assert unreadable_file(tmp_path) is None
    weights.chmod(0o200)
    assert unreadable_file(tmp_path) == weights
    with pytest.raises(PermissionError, match=r"model\.safetensors: permission denied: not readable by uid"):
        check_readable(tmp_path / "model")
    weights.chmod(0o600)
    (tmp_path / "model").chmod(0o300)
    try:
        assert unreadable_file(tmp_path) == tmp_path / "model"
    finally:
        (tmp_path / "model").chmod(0o700)


def test_a_hub_id_or_missing_path_is_not_checked() -> None:
    assert unreadable_file("google/gemma-2-2b-it") is None
    check_readable("google/gemma-2-2b-it")
