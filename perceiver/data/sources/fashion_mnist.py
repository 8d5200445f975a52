"""Fashion-MNIST from the Debian package ``dataset-fashion-mnist``: its own train (60k) and test (10k) sets."""

from __future__ import annotations

import gzip
import pathlib

import numpy as np

from perceiver.data.sources.base import Source, seeded_order

CLASS_NAMES = ("t-shirt/top", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "ankle boot")
FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
         "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}


def read_idx(path: pathlib.Path) -> np.ndarray:
    """An IDX file (optionally gzipped) → uint8 array of its shape."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as file:
        data = file.read()
    if data[:2] != b"\0\0" or data[2] != 0x08:
        raise ValueError(f"{path}: not an unsigned-byte IDX file (magic {data[:4].hex()})")
    rank = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(rank))
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * rank).reshape(shape)


class FashionMNIST(Source):
    name = "fashion-mnist"
    splits = ("train", "test")
    fields = ("png", "cls", "json")
    install = "apt-get install -y --no-install-recommends dataset-fashion-mnist"
    default_root = pathlib.Path("/usr/share/datasets/fashion-mnist")

    def __init__(self, root=None):
        super().__init__(root)
        self._arrays: dict[str, tuple[np.ndarray, np.ndarray]] = {}

    def _find(self, stem: str) -> pathlib.Path:
        root = self.root or self.default_root
        for candidate in (root / f"{stem}.gz", root / stem):
            if candidate.exists():
                return candidate
        return self.require(root / f"{stem}.gz", f"no {stem}[.gz] in {root}")

    def _load(self, split: str) -> tuple[np.ndarray, np.ndarray]:
        if split not in self._arrays:
            images, labels = (read_idx(self._find(stem)) for stem in FILES[split])
            self._arrays[split] = images, labels
        return self._arrays[split]

    def specs(self, split, seed):
        images, _ = self._load(split)
        return [(split, i) for i in seeded_order(range(len(images)), seed, f"{self.name}/{split}")]

    def make(self, spec):
        split, index = spec
        images, labels = self._load(split)
        label = int(labels[index])
        return {"key": f"{split}{index:05d}", "image": images[index].copy(), "label": label,
                "meta": {"class_name": CLASS_NAMES[label], "index": int(index)}}
