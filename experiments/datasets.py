"""The shards an experiment reads: found under ``--data``, or built there first from the shipped source."""

from __future__ import annotations
from pathlib import Path

import torch.distributed as dist

from perceiver.data import MissingShardsError, build_dataset, find_shards
from perceiver.training import distributed


def ensure_shards(name: str, data_dir: str | Path, splits: tuple[str, ...], *, limit: int | None = None,
                  seed: int = 0) -> dict[str, list[str]]:
    """Shard paths per split of dataset ``name`` under ``data_dir/name``; missing splits are built (by rank 0).

    ``limit`` caps the samples per split of a build (tiny runs and tests); existing shards are used as they are.
    """
    directory = Path(data_dir) / name
    shards = {}
    for split in splits:
        try:
            shards[split] = find_shards(directory, name, split)
        except MissingShardsError:
            if distributed.rank() == 0:
                print(f"building {name}/{split} shards in {directory}")
                build_dataset(name, directory, splits=[split], limit=limit, seed=seed)
            if dist.is_available() and dist.is_initialized():
                dist.barrier()  # the other ranks wait for rank 0's build
            shards[split] = find_shards(directory, name, split)
    return shards
