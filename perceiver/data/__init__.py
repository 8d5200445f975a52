"""Sharded webdataset pipelines: shard writers for the shipped datasets, readers and collation."""
