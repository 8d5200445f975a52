"""Build a dataset's shards: list the split's sample specs, take ``limit`` of them, encode and write."""

from __future__ import annotations

import json
import pathlib

from tqdm import tqdm

from perceiver.data import codecs
from perceiver.data.shards import ShardWriter
from perceiver.data.sources import SOURCES, Source, get_source
from perceiver.files import atomic_write_text


def manifest_path(directory, name: str, split: str) -> pathlib.Path:
    """``directory/NAME-{split}.json``: what a build of that split wrote (see ``read_manifest``)."""
    return pathlib.Path(directory) / f"{name}-{split}.json"


def read_manifest(directory, name: str, split: str) -> dict | None:
    """What was built: ``{"dataset", "split", "limit", "samples", "shards", "shard_size", "seed"}``, or None for
    shards built without one (before manifests existed). Written last, so a build cut short leaves none."""
    path = manifest_path(directory, name, split)
    return json.loads(path.read_text()) if path.is_file() else None


def encode_sample(sample: dict) -> dict:
    """A made sample (arrays) → shard fields (bytes)."""
    fields = {"__key__": sample["key"]}
    if "image" in sample:
        fields["png"] = codecs.encode_png(sample["image"])
    if "audio" in sample:
        fields["flac"] = codecs.encode_flac(sample["audio"], sample["sample_rate"])
    if "text" in sample:
        fields["txt"] = codecs.encode_text(sample["text"])
    if "label" in sample:
        fields["cls"] = codecs.encode_label(sample["label"])
    if "meta" in sample:
        fields["json"] = codecs.encode_json(sample["meta"])
    return fields


def build_dataset(
    name: str,
    out_dir,
    *,
    splits=None,
    limit: int | None = None,
    shard_size: int = 1000,
    seed: int = 0,
    progress: bool = True,
    source=None,
) -> dict[str, list[pathlib.Path]]:
    """Write ``NAME-{split}-%06d.tar`` shards of ``name`` under ``out_dir``; returns split → shard paths.

    ``splits`` defaults to all of the dataset's splits; ``limit`` caps the samples per split (a seeded subset);
    each split's ``NAME-{split}.json`` beside its shards records the limit and sample count (``read_manifest``);
    ``source`` overrides where the raw data is read from (a path, or a ``Source`` object). Raises ``DataSourceError``
    (with the install command) when the source is missing. The same arguments always write the same bytes, and a
    sample's bytes do not depend on the limit or on which splits are built with it.
    """
    if not isinstance(source, Source):
        source = get_source(name, source)
    elif source.name != name:
        raise ValueError(f"source: expected a source of {name!r}, got one of {source.name!r}")
    splits = source.splits if splits is None else tuple([splits] if isinstance(splits, str) else splits)
    for split in splits:
        if split not in source.splits:
            raise ValueError(f"splits: {name} has splits {', '.join(source.splits)}, got {split!r}")
    if limit is not None and limit < 1:
        raise ValueError(f"limit: expected a positive number of samples per split or None, got {limit}")
    out_dir = pathlib.Path(out_dir)
    written = {}
    for split in splits:
        specs = list(source.specs(split, seed))[:limit]
        manifest_path(out_dir, name, split).unlink(missing_ok=True)
        for stale in out_dir.glob(f"{name}-{split}-*.tar"):
            stale.unlink()  # a rebuild with fewer shards must not leave old ones to be read
        with ShardWriter(out_dir, name, split, shard_size=shard_size) as writer:
            for spec in tqdm(specs, desc=f"{name}/{split}", unit="sample", disable=not progress):
                writer.write(encode_sample(source.make(spec)))
        written[split] = list(writer.paths)
        manifest = {"dataset": name, "split": split, "limit": limit, "samples": len(specs),
                    "shards": len(written[split]), "shard_size": shard_size, "seed": seed}
        atomic_write_text(manifest_path(out_dir, name, split), json.dumps(manifest, indent=2) + "\n")
    return written


DATASETS = tuple(SOURCES)
