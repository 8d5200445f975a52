"""``python -m perceiver.data build NAME --out DIR``: write a dataset's shards, with a progress bar."""

from __future__ import annotations

import argparse
import sys

from perceiver.data import DATASETS, DataSourceError, build_dataset
from perceiver.data.sources import SOURCES


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m perceiver.data", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    build = commands.add_parser("build", help="write NAME-{split}-NNNNNN.tar shards of a dataset")
    build.add_argument("name", choices=DATASETS)
    build.add_argument("--out", required=True, help="directory for the shards")
    build.add_argument("--split", action="append", help="a split to build (repeatable; default: all)")
    build.add_argument("--shard-size", type=int, default=1000, help="samples per shard")
    build.add_argument("--limit", type=int, default=None, help="at most this many samples per split")
    build.add_argument("--seed", type=int, default=0)
    build.add_argument("--source", default=None, help="read the raw data from here instead of its default place")
    args = parser.parse_args(argv)
    # the usage errors argparse cannot see: reported like its own (usage, "error: ...", exit status 2)
    splits = SOURCES[args.name].splits
    for split in args.split or ():
        if split not in splits:
            build.error(f"argument --split: {args.name} has splits {', '.join(splits)}, got {split!r}")
    for name, value in (("--limit", args.limit), ("--shard-size", args.shard_size)):
        if value is not None and value < 1:
            build.error(f"argument {name}: expected a positive number of samples, got {value}")
    try:
        written = build_dataset(args.name, args.out, splits=args.split, limit=args.limit,
                                shard_size=args.shard_size, seed=args.seed, source=args.source)
    except DataSourceError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    for split, paths in written.items():
        print(f"{args.name}/{split}: {len(paths)} shard(s) in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
