"""The serving process's host thread settings (CPU): how many threads torch's kernels use.

Intra-op threads: the CPUs this process may run on (its affinity mask, which `taskset`, container cpusets and
Kubernetes CPU pinning set), unless `STEER_THREADS` says otherwise. torch's own default counts the host's cores and
ignores the mask, so a pinned server would start more threads than it has CPUs, and an OpenMP thread that waits
for a CPU stalls every kernel it takes part in. Inter-op threads: 1, since the engine runs one forward at a time
from one thread, so that pool would only add idle threads. On a machine shared with other busy processes, fewer
threads than CPUs (even 1) can be faster: the bench runs with 1.
"""

from __future__ import annotations

import contextlib
import os

import torch


def available_cpus() -> int:
    """CPUs this process may run on."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def configure_threads(threads: int | None = None) -> tuple[int, int]:
    """Set torch's intra-op threads (`threads`, else `available_cpus()`) and 1 inter-op thread; the result."""
    torch.set_num_threads(threads or available_cpus())
    with contextlib.suppress(RuntimeError):  # the inter-op pool is fixed once it has run work
        torch.set_num_interop_threads(1)
    return torch.get_num_threads(), torch.get_num_interop_threads()
