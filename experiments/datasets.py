"""The shards an experiment reads: found under ``--data``, or built there first from the shipped source."""

from __future__ import annotations
from pathlib import Path

import torch.distributed as dist

from perceiver.data import MissingShardsError, build_dataset, find_shards, read_manifest
from perceiver.training import distributed


def ensure_shards(name: str, data_dir: str | Path, splits: tuple[str, ...], *, limit: int | None = None,
                  seed: int = 0) -> dict[str, list[str]]:
    """Shard paths per split of dataset ``name`` under ``data_dir/name``; missing splits are built (by rank 0).

    ``limit`` caps the samples per split of a build (tiny runs and tests). Existing shards are used when their
    manifest (``NAME-{split}.json``) records the same limit; shards built with another limit are rebuilt, and the run
    says so. Shards without a manifest (built before manifests existed) are used as they are, with a note.
    """
    directory = Path(data_dir) / name
    shards = {}
    for split in splits:
        if distributed.rank() == 0:
            reason = _why_build(directory, name, split, limit)
            if reason:
                print(f"building {name}/{split} shards in {directory}: {reason}")
                build_dataset(name, directory, splits=[split], limit=limit, seed=seed)
        if dist.is_available() and dist.is_initialized():
            dist.barrier()  # the other ranks wait for rank 0's check and build
        shards[split] = find_shards(directory, name, split)
    return shards


def _asked(limit: int | None) -> str:
    return "all samples" if limit is None else f"--limit {limit}"


def _why_build(directory: Path, name: str, split: str, limit: int | None) -> str | None:
    """Why the split must be built now, or None when the shards there are the ones asked for."""
    try:
        find_shards(directory, name, split)
    except MissingShardsError:
        return "none there yet"
    manifest = read_manifest(directory, name, split)
    if manifest is None:
        print(f"note: {name}/{split} shards in {directory} have no manifest ({name}-{split}.json), so the limit they "
              f"were built with is unknown; using them as they are (rebuild: python -m perceiver.data build {name} "
              f"--out {directory} --split {split})")
        return None
    if manifest.get("limit") != limit:
        return (f"they were built with {_asked(manifest.get('limit'))} ({manifest.get('samples')} samples), this run "
                f"asks for {_asked(limit)}")
    return None
