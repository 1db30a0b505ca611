"""Write `requirements/lock.txt` from `pip freeze --all` of a venv installed from pyproject.toml (`make lock`).

The lock is used as a pip constraints file (`pip install -c requirements/lock.txt ...`) by every install step:
`make serve`, `make test`, `.ci/run` and the Docker images. Local version labels (`torch==2.13.0+cpu`) are
dropped so the same line admits the CPU wheel here and the CUDA build of the same release in the GPU image.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

HEADER = """\
# The exact versions `make test` was run with: pip constraints for every install step of the project.
# Generated from pyproject.toml by `make lock` (a fresh venv: torch=={torch}, then `-e .[dev]`, then
# `pip freeze --all`) on Python {python}, Linux x86_64. Refresh with `make lock`, then run `make test`.
"""


def main(venv_python: str, out: str) -> int:
    frozen = subprocess.run(
        [venv_python, "-m", "pip", "freeze", "--all", "--exclude-editable"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    pins = []
    for line in frozen.splitlines():
        line = line.strip()
        if not line or line.startswith("#") or " @ " in line or line.startswith("-e "):
            continue  # comments, the editable project itself, direct references
        name, _, version = line.partition("==")
        pins.append(f"{name}=={re.sub(r'[+].*$', '', version)}")
    pins.sort(key=str.lower)
    torch = next(p.split("==")[1] for p in pins if p.lower().startswith("torch=="))
    python = subprocess.run(
        [venv_python, "-c", "import platform; print(platform.python_version())"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    Path(out).write_text(HEADER.format(torch=torch, python=python) + "\n".join(pins) + "\n")
    print(f"{out}: {len(pins)} pins (torch {torch}, Python {python})")
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
