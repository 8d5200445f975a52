"""The thread count of a run: the cores free now, unless asked otherwise."""

import pytest
import torch

from perceiver import threads as threads_module
from perceiver.threads import choose_threads, set_threads


@pytest.fixture
def two_cores(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(threads_module.os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)

    def with_load(load):
        monkeypatch.setattr(threads_module.os, "getloadavg", lambda: (load, load, load))

    return with_load


@pytest.mark.parametrize("load, expected", [(0.0, 2), (0.4, 2), (0.6, 1), (1.2, 1), (2.9, 1), (7.0, 1)])
def test_threads_fit_the_free_cores(two_cores, load, expected):
    two_cores(load)
    assert choose_threads()[0] == expected


def test_an_explicit_choice_wins(two_cores, monkeypatch):
    two_cores(3.0)
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
        assert set_threads() == (1, "2 cores, load 1.5: 1 free") and torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
