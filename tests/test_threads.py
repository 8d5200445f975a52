"""The thread count of a run: the cores free now, unless asked otherwise."""

import sys

import pytest
import torch

from perceiver import threads as threads_module
from perceiver.threads import busy_cores, choose_threads, read_cpu_times, set_threads


@pytest.fixture
def two_cores(monkeypatch):
    """A 2-core machine whose busy cores (watched over /proc/stat) are ``busy``; ``busy=None`` leaves only the
    one-minute load average, ``load``."""
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(threads_module.os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    monkeypatch.setattr(threads_module.os, "cpu_count", lambda: 2)

    def with_load(busy, load=0.0):
        monkeypatch.setattr(threads_module, "busy_cores", lambda: busy)
        monkeypatch.setattr(threads_module.os, "getloadavg", lambda: (load, load, load))

    return with_load


@pytest.mark.parametrize("busy, expected", [(0.0, 2), (0.4, 2), (0.6, 1), (1.2, 1), (2.0, 1)])
def test_threads_fit_the_free_cores(two_cores, busy, expected):
    two_cores(busy, load=3.0)  # a machine busy a minute ago but not now gets its cores: the load average lags
    assert choose_threads()[0] == expected


@pytest.mark.parametrize("load, expected", [(0.0, 2), (0.4, 2), (0.6, 1), (1.2, 1), (2.9, 1), (7.0, 1)])
def test_the_load_average_stands_in_without_proc_stat(two_cores, load, expected):
    two_cores(None, load=load)
    assert choose_threads()[0] == expected


def test_only_the_machine_left_over_limits_the_threads(monkeypatch):
    """Two of eight cores in this process's mask, five busy elsewhere: three are free, so both of its own."""
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(threads_module.os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    monkeypatch.setattr(threads_module.os, "cpu_count", lambda: 8)
    monkeypatch.setattr(threads_module, "busy_cores", lambda: 5.0)
    assert choose_threads() == (2, "all 2 cores are free (5.0 busy over the last 0.3 s)")
    monkeypatch.setattr(threads_module, "busy_cores", lambda: 7.2)
    assert choose_threads() == (1, "2 cores, 7.2 busy over the last 0.3 s: 1 free")


def test_an_explicit_choice_wins(two_cores, monkeypatch):
    two_cores(2.0, load=3.0)
    assert choose_threads(2) == (2, "as asked (--threads)")
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    assert choose_threads() == (2, "from OMP_NUM_THREADS")
    assert choose_threads(1)[0] == 1
    monkeypatch.setenv("OMP_NUM_THREADS", "many")
    with pytest.raises(ValueError, match="OMP_NUM_THREADS: expected a positive int, got 'many'"):
        choose_threads()
    with pytest.raises(ValueError, match="threads: expected a positive int or None, got 0"):
        choose_threads(0)


def test_set_threads_sets_torch(two_cores):
    two_cores(1.5)
    before = torch.get_num_threads()
    try:
        assert set_threads() == (1, "2 cores, 1.5 busy over the last 0.3 s: 1 free") and torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
    two_cores(None, load=1.5)
    try:
        assert set_threads() == (1, "2 cores, load 1.5: 1 free") and torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_cpu_times_leave_out_idle_iowait_and_nice(tmp_path):
    stat = tmp_path / "stat"
    # user nice system idle iowait irq softirq steal guest guest_nice: guest is inside user already
    stat.write_text("cpu  100 40 20 500 30 5 5 10 7 0\ncpu0 50 20 10 250 15 2 3 5 3 0\n")
    assert read_cpu_times(str(stat)) == (100 + 20 + 5 + 5 + 10, 100 + 40 + 20 + 500 + 30 + 5 + 5 + 10)
    stat.write_text("intr 12 3 4\n")
    with pytest.raises(OSError, match="expected a first line 'cpu user nice"):
        read_cpu_times(str(stat))


def test_busy_cores_over_a_window(monkeypatch):
    """One of two cores busy during the window (150 of 300 ticks), whatever the machine did before it."""
    samples = iter([(10_000, 40_000), (10_150, 40_300)])
    monkeypatch.setattr(threads_module, "read_cpu_times", lambda: next(samples))
    monkeypatch.setattr(threads_module.os, "cpu_count", lambda: 2)
    monkeypatch.setattr(threads_module.time, "sleep", lambda seconds: None)
    assert busy_cores() == pytest.approx(1.0)

    def unreadable():
        raise OSError("no /proc/stat")

    monkeypatch.setattr(threads_module, "read_cpu_times", unreadable)
    assert busy_cores() is None


def test_busy_cores_on_this_machine_is_a_count_of_cores():
    busy = busy_cores(0.05)
    if sys.platform.startswith("linux"):
        assert busy is not None
    if busy is not None:
        assert 0.0 <= busy <= (threads_module.os.cpu_count() or 1) + 1e-9
