"""Loader throughput: samples/s of read + decode + collate per dataset, with 1 and 2 DataLoader workers.

Builds a small subset of each dataset (``--samples`` per dataset, shards of ``--shard-size``) in a temporary
directory, reads it for ``--passes`` epochs per configuration and reports the median pass. For scale it also times
the training step of the default model of ``python -m perceiver`` on this CPU (samples/s it consumes); the loader
should deliver at least 5× that. Prints a Markdown table and writes the same figures as JSON.

    python -m benchmarks.data_loader --out benchmarks/results/data_loader
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
import warnings

import torch
from torch import nn

from perceiver.data import DATASETS, DataSourceError, build_dataset, make_loader
from perceiver.files import write_results

TARGET_FACTOR = 5


def loader_samples_per_second(shards, *, num_workers: int, batch_size: int, passes: int) -> float:
    rates = []
    for epoch in range(passes):
        loader = make_loader(shards, batch_size=batch_size, num_workers=num_workers, epoch=epoch, shuffle_buffer=256)
        start, count = time.perf_counter(), 0
        for batch in loader:
            count += len(batch["key"])
        rates.append(count / (time.perf_counter() - start))
    return sorted(rates)[len(rates) // 2]


def training_samples_per_second(batch_size: int = 16, steps: int = 6) -> float:
    """Samples/s that a training step of the default ``python -m perceiver`` model consumes on this machine."""
    from perceiver.__main__ import default_model

    torch.manual_seed(0)
    model = default_model(num_latents=256, num_latent_channels=256)
    optimizer = torch.optim.AdamW(model.parameters(), lr=5e-4)
    ids, labels = torch.randint(0, 256, (batch_size, 64)), torch.randint(0, 4, (batch_size,))
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        loss = nn.functional.cross_entropy(model(ids), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        times.append(time.perf_counter() - start)
    return batch_size / sorted(times[1:])[len(times[1:]) // 2]


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", nargs="*", default=list(DATASETS))
    parser.add_argument("--samples", type=int, default=256, help="samples built and read per dataset")
    parser.add_argument("--shard-size", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--passes", type=int, default=3)
    parser.add_argument("--out", default="benchmarks/results/data_loader", help="writes OUT.json and OUT.md")
    args = parser.parse_args(argv)

    train_rate = training_samples_per_second()
    rows = []
    with tempfile.TemporaryDirectory() as directory, warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # DataLoader's note about more workers than cores
        for name in args.datasets:
            try:
                shards = build_dataset(name, directory, splits=["train"], limit=args.samples,
                                       shard_size=args.shard_size, progress=False)["train"]
            except DataSourceError as error:
                print(f"{name}: skipped, {error}")
                continue
            row = {"dataset": name, "samples": args.samples}
            for workers in (1, 2):
                row[f"samples_per_s_{workers}_workers"] = round(
                    loader_samples_per_second(shards, num_workers=workers, batch_size=args.batch_size,
                                              passes=args.passes), 1)
            row["times_training_rate"] = round(min(row["samples_per_s_1_workers"],
                                                   row["samples_per_s_2_workers"]) / train_rate, 1)
            rows.append(row)
    result = {
        "device": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores (shared)",
        "versions": {"python": platform.python_version(), "torch": torch.__version__},
        "batch_size": args.batch_size,
        "training_samples_per_s": round(train_rate, 1),
        "target": f">= {TARGET_FACTOR}x training_samples_per_s",
        "rows": rows,
    }
    lines = [
        f"Training step of the default `python -m perceiver` model (batch 16, AdamW): {train_rate:.1f} samples/s "
        f"(target for the loader: "
        f">= {TARGET_FACTOR * train_rate:.0f} samples/s). {result['device']}, torch {torch.__version__}.",
        "",
        "| dataset | samples/s, 1 worker | samples/s, 2 workers | × training rate |",
        "| --- | ---: | ---: | ---: |",
    ]
    lines += [f"| {r['dataset']} | {r['samples_per_s_1_workers']:.0f} | {r['samples_per_s_2_workers']:.0f} | "
              f"{r['times_training_rate']:.1f} |" for r in rows]
    table = "\n".join(lines)
    print(table)
    write_results(args.out, table, result)
    return result


if __name__ == "__main__":
    main()
