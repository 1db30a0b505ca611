"""File modes of what the project writes for others to serve, and a clear error where a server cannot read.

Worlds, vectors, SAEs and catalogs are read by another user as often as not (a container's uid 10001 reading a
folder built on the host). Everything the project writes gets the mode the umask gives a new file (0644 under
the usual 022), never narrower: a temporary file (`mkstemp`, mode 0600) renamed into place or a library that
writes 0600 would otherwise leave files only their owner can read.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

__all__ = ["check_readable", "default_mode", "not_readable", "share_readable", "unreadable_file"]


def _umask() -> int:
    """The process umask, read without changing it where /proc says it (changing it races other threads)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def default_mode(directory: bool = False) -> int:
    """The mode `open()` (0666) or `mkdir()` (0777) gives a new file or folder under the current umask."""
    return (0o777 if directory else 0o666) & ~_umask()


def share_readable(path: str | os.PathLike[str]) -> None:
    """Widen `path` (and everything below it, for a folder) to at least the umask's default mode.

    Bits already set are kept; links are neither followed nor changed.
    """
    root = Path(path)
    files, folders = default_mode(), default_mode(directory=True)
    paths = [root, *root.rglob("*")] if root.is_dir() and not root.is_symlink() else [root]
    for p in paths:
        st = p.lstat()
        if stat.S_ISLNK(st.st_mode):
            continue
        want = folders if stat.S_ISDIR(st.st_mode) else files
        if st.st_mode & want != want:
            os.chmod(p, stat.S_IMODE(st.st_mode) | want)


def _user() -> str:
    uid = os.geteuid()
    try:
        import pwd

        return f"uid {uid} ({pwd.getpwuid(uid).pw_name})"
    except (ImportError, KeyError):
        return f"uid {uid}"


def not_readable(path: str | os.PathLike[str]) -> str:
    """Why this process cannot read `path`: the user it runs as and the file's mode and owner (no path)."""
    p = Path(path)
    try:
        st = p.stat()
        mode = f"mode {stat.S_IMODE(st.st_mode):04o}, owner uid {st.st_uid}"
    except OSError as e:
        mode = f"mode unknown: {e.strerror}"
    what = "folder not readable" if p.is_dir() else "not readable"
    return f"permission denied: {what} by {_user()} ({mode})"


def check_readable(path: str | os.PathLike[str]) -> None:
    """Raise `PermissionError` naming the first file or folder under `path` this process cannot read."""
    bad = unreadable_file(path)
    if bad is not None:
        raise PermissionError(f"{bad}: {not_readable(bad)}")


def unreadable_file(path: str | os.PathLike[str]) -> Path | None:
    """The first file or folder under `path` (itself included) this process cannot read, or None.

    A folder needs read and search permission; hidden entries (caches, temporary files) are not checked.
    """
    root = Path(path)
    if not root.exists():
        return None
    if not root.is_dir():
        return None if os.access(root, os.R_OK) else root
    if not os.access(root, os.R_OK | os.X_OK):
        return root
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for d in dirnames:
            if not os.access(here / d, os.R_OK | os.X_OK):
                return here / d
        for fn in sorted(filenames):
            if not fn.startswith(".") and not os.access(here / fn, os.R_OK):
                return here / fn
    return None
