"""Run parts of a job in child Python processes side by side, passing JSON both ways (never pickles).

The demo report trains 16 vectors and evaluates them; each run is seeded on its own and uses one torch thread,
so running them in N processes gives the same files as running them one after another, N times sooner on N
cores. A child is `python -m <module> SPEC RESULT`: it reads the JSON spec, writes the JSON result, and its
output goes to a log file whose tail is quoted if it fails.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any


class ChildFailed(RuntimeError):
    """A child process exited non-zero; the message quotes the end of its log."""


def run_children(module: str, specs: Sequence[Mapping[str, Any]], log_dir: Path) -> list[Any]:
    """Start one `python -m module` per spec at once, wait for all, return their results in spec order."""
    log_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="steer-fanout-") as tmp:
        procs = []
        for i, spec in enumerate(specs):
            spec_path, result_path = Path(tmp) / f"spec-{i}.json", Path(tmp) / f"result-{i}.json"
            spec_path.write_text(json.dumps(spec))
            log_path = log_dir / f"{module.rsplit('.', 1)[-1]}-{i}.log"
            with log_path.open("wb") as log:
                cmd = [sys.executable, "-m", module, str(spec_path), str(result_path)]
                procs.append(
                    (subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT), result_path, log_path)
                )
        failed = []
        for proc, _, log_path in procs:
            if proc.wait() != 0:
                failed.append(f"{log_path} (exit {proc.returncode}):\n{_tail(log_path)}")
        if failed:
            raise ChildFailed(
                f"{len(failed)} of {len(procs)} {module} processes failed: " + "\n".join(failed)
            )
        return [json.loads(result_path.read_text()) for _, result_path, _ in procs]


def child_io(argv: Sequence[str]) -> tuple[dict[str, Any], Path]:
    """A child's spec (parsed) and where its result goes, from `python -m module SPEC RESULT`."""
    if len(argv) != 2:
        raise SystemExit("usage: python -m <module> SPEC.json RESULT.json")
    return json.loads(Path(argv[0]).read_text()), Path(argv[1])


def balance(costs: Sequence[float], parts: int) -> list[list[int]]:
    """Indices of `costs` split into at most `parts` groups of about equal total (largest first, deterministic)."""
    groups: list[list[int]] = [[] for _ in range(max(1, min(parts, len(costs))))]
    loads = [0.0] * len(groups)
    for i in sorted(range(len(costs)), key=lambda i: (-costs[i], i)):
        g = min(range(len(groups)), key=lambda g: (loads[g], g))
        groups[g].append(i)
        loads[g] += costs[i]
    return [sorted(g) for g in groups if g]


def _tail(path: Path, lines: int = 20) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


__all__ = ["ChildFailed", "balance", "child_io", "run_children"]
