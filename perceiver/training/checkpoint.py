"""Atomic checkpoints and the random-number-generator states that exact resume needs.

A checkpoint is written with ``perceiver.files.atomic_write_bytes``: a process killed at any moment leaves either the
previous checkpoint or the new one, never a torn file; the file gets the umask's permissions.
"""

from __future__ import annotations

import io
import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from perceiver.files import atomic_write_bytes

LATEST = "latest.pt"


def save_checkpoint(path: str | os.PathLike, state: dict[str, Any]) -> Path:
    """Serialise ``state`` (tensors, numbers, strings, lists, dicts) with ``torch.save`` and write it atomically.

    The bytes are built in memory first, so a failure while pickling never touches the file system.
    """
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return atomic_write_bytes(path, buffer.getvalue())


def load_checkpoint(path: str | os.PathLike, *, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint written by ``save_checkpoint`` (plain data only: ``weights_only=True``)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"path: expected a checkpoint file at {path}")
    return torch.load(path, map_location=map_location, weights_only=True)


def rng_state() -> dict[str, Any]:
    """The states of Python's, NumPy's and PyTorch's global generators (CUDA too when present), as plain data."""
    kind, keys, position, has_gauss, cached_gaussian = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "position": position,
                  "has_gauss": has_gauss, "cached_gaussian": cached_gaussian},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what ``rng_state`` returned."""
    random.setstate(_as_tuples(state["python"]))
    numpy = state["numpy"]
    np.random.set_state((numpy["kind"], numpy["keys"].numpy().astype(np.uint32), numpy["position"],
                         numpy["has_gauss"], numpy["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _as_tuples(value):
    # random.setstate wants the nested tuples it gave; a round trip through a checkpoint may turn them into lists.
    return tuple(_as_tuples(item) for item in value) if isinstance(value, (list, tuple)) else value
