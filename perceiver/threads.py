"""How many CPU threads a run should use: as many as the cores it actually has free.

PyTorch's CPU kernels split each operation over their OpenMP threads and wait for the slowest. When more threads are
runnable than there are cores (another job on the machine), every step waits for threads that are not running: on
a 2-core machine shared with one other job, one thread trained 2.3 times faster than two. ``choose_threads`` takes
the machine's cores minus those that other processes keep busy now, measured over a fraction of a second from
``/proc/stat`` (``busy_cores``; where that is unavailable, the one-minute load average, ``os.getloadavg``), at most
the cores this process may run on (``os.sched_getaffinity``) and at least one. An explicit choice (``--threads``,
or ``OMP_NUM_THREADS`` in the environment) wins.

Why not the load average alone: it lags by about a minute, so a run started just after another job ended (the
``pip install`` before a README command, a test suite) saw a loaded machine and took one thread of an idle two.
"""

from __future__ import annotations

import os
import time

import torch


def available_cores() -> int:
    """The cores this process may run on (its affinity mask; all of the machine's where that is unknown)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


# The window over which busy_cores watches the machine: long enough for a kernel tick of 100 Hz to count a busy
# core 30 times, short enough not to delay a run's start noticeably.
BUSY_WINDOW_SECONDS = 0.3


def read_cpu_times(path: str = "/proc/stat") -> tuple[int, int]:
    """(busy, total) clock ticks of all CPUs since boot from the first line of ``/proc/stat``.

    Busy is everything but idle, iowait and nice: a process at a raised nice value yields its core to this run almost
    entirely (the scheduler weighs nice 19 at about 1.5% of nice 0), so it does not take a thread away. Guest time is
    already inside user time, so only the first eight fields add up to the total."""
    with open(path) as stat:
        fields = stat.readline().split()
    if not fields or fields[0] != "cpu" or len(fields) < 9:
        raise OSError(f"{path}: expected a first line 'cpu user nice system idle iowait irq softirq steal ...', "
                      f"got {' '.join(fields)!r}")
    user, nice, system, idle, iowait, irq, softirq, steal = (int(value) for value in fields[1:9])
    total = user + nice + system + idle + iowait + irq + softirq + steal
    return total - idle - iowait - nice, total


def busy_cores(window: float = BUSY_WINDOW_SECONDS) -> float | None:
    """How many cores other processes keep busy, watched over ``window`` seconds while this one sleeps; None where
    ``/proc/stat`` cannot be read (not Linux)."""
    try:
        busy_before, total_before = read_cpu_times()
        time.sleep(window)
        busy_after, total_after = read_cpu_times()
    except OSError:
        return None
    ticks = total_after - total_before
    if ticks <= 0:
        return None
    return (os.cpu_count() or 1) * (busy_after - busy_before) / ticks


def free_cores() -> tuple[int, str]:
    """(the cores free now, at least 1; how that was measured): the machine's cores minus those that other
    processes keep busy, at most ``available_cores()``. Without ``/proc/stat`` the one-minute load average stands
    for the busy cores."""
    cores = available_cores()
    busy = busy_cores()
    if busy is not None:
        measured = f"{busy:.1f} busy over the last {BUSY_WINDOW_SECONDS:g} s"
    else:
        try:
            busy = os.getloadavg()[0]
        except (AttributeError, OSError):  # neither measure on this platform: assume the cores are free
            return cores, "no load measure"
        measured = f"load {busy:.1f}"
    # Other processes may be busy on cores outside this one's affinity mask: only what is left of the whole machine
    # can be lost to them.
    return max(1, min(cores, round((os.cpu_count() or cores) - busy))), measured


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
    threads, measured = free_cores()
    if threads == cores:
        return threads, f"all {cores} cores are free ({measured})"
    return threads, f"{cores} cores, {measured}: {threads} free"


def set_threads(requested: int | None = None) -> tuple[int, str]:
    """``torch.set_num_threads(choose_threads(requested))``; returns (threads, why)."""
    threads, why = choose_threads(requested)
    torch.set_num_threads(threads)
    return threads, why
