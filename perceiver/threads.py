"""How many CPU threads a run should use: as many as the cores it actually has free.

PyTorch's CPU kernels split each operation over their OpenMP threads and wait for the slowest. When more threads are
runnable than there are cores (another job on the machine), every step waits for threads that are not running: on
a 2-core machine shared with one other job, one thread trained 2.3 times faster than two. ``choose_threads`` takes
the cores this process may run on (``os.sched_getaffinity``) minus the load of the last minute
(``os.getloadavg``), at least one; an explicit choice (``--threads``, or ``OMP_NUM_THREADS`` in the environment)
wins.
"""

from __future__ import annotations

import os

import torch


def available_cores() -> int:
    """The cores this process may run on (its affinity mask; all of the machine's where that is unknown)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def free_cores() -> int:
    """``available_cores()`` minus the one-minute load average (rounded), at least 1."""
    cores = available_cores()
    try:
        load = os.getloadavg()[0]
    except (AttributeError, OSError):  # no load average on this platform: assume the cores are free
        return cores
    return max(1, min(cores, round(cores - load)))


def choose_threads(requested: int | None = None) -> tuple[int, str]:
    """(threads, why): ``requested`` if given, else ``OMP_NUM_THREADS`` if set, else ``free_cores()``."""
    if requested is not None:
        if requested < 1:
            raise ValueError(f"threads: expected a positive int or None, got {requested}")
        return requested, "as asked (--threads)"
    env = os.environ.get("OMP_NUM_THREADS", "").strip()
    if env:
        try:
            threads = int(env)
        except ValueError:
            raise ValueError(f"OMP_NUM_THREADS: expected a positive int, got {env!r}") from None
        if threads < 1:
            raise ValueError(f"OMP_NUM_THREADS: expected a positive int, got {env!r}")
        return threads, "from OMP_NUM_THREADS"
    cores = available_cores()
    threads = free_cores()
    if threads == cores:
        return threads, f"all {cores} cores are free"
    return threads, f"{cores} cores, load {os.getloadavg()[0]:.1f}: {threads} free"


def set_threads(requested: int | None = None) -> tuple[int, str]:
    """``torch.set_num_threads(choose_threads(requested))``; returns (threads, why)."""
    threads, why = choose_threads(requested)
    torch.set_num_threads(threads)
    return threads, why
