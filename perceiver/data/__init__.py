"""Sharded webdataset pipelines: shard writers for the shipped datasets, readers and collation.

``build_dataset(name, out_dir)`` writes ``NAME-{split}-%06d.tar`` shards (also ``python -m perceiver.data build``);
each split's ``NAME-{split}.json`` (``read_manifest``) records its limit and sample count; ``find_shards`` lists them;
``make_loader`` streams them (or any webdataset URL) into padded, masked batches (True = padding) and skips,
counts and reports corrupt samples.
"""

from perceiver.data.build import DATASETS, build_dataset, encode_sample, read_manifest
from perceiver.data.collate import collate
from perceiver.data.errors import CorruptSampleError, DataSourceError, MissingShardsError
from perceiver.data.loader import CorruptSampleWarning, find_shards, make_loader
from perceiver.data.sources import get_source

__all__ = [
    "DATASETS", "build_dataset", "encode_sample", "read_manifest", "collate", "find_shards", "make_loader",
    "get_source",
    "DataSourceError", "MissingShardsError", "CorruptSampleError", "CorruptSampleWarning",
]
