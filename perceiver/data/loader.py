"""Stream shards into batches: split shards by rank and worker, read tars, decode, shuffle, collate.

The pipeline runs inside each DataLoader worker (``webdataset.DataPipeline`` stages), so that batches carry the
worker's count of skipped corrupt samples. Two modes:

- ``"epoch"``: the shard list is shuffled with (seed, epoch), the same on every rank, then rank ``r`` of ``W``
  takes shards ``r::W`` and its worker ``w`` of ``K`` takes every ``K``-th of those (webdataset's
  ``split_by_node`` + ``split_by_worker``, made explicit so that it does not depend on global state). Every sample
  is read exactly once per epoch across ranks and workers. Ranks may get different numbers of batches when shards
  are uneven; a DDP loop should use as many shards as ranks × workers, of equal size, or stop at the shortest rank.
- ``"resampled"``: each worker draws shards with replacement forever (seeded by seed, epoch, rank, worker).

The order is a function of (seed, epoch, world size, rank, num_workers): a resumed run rebuilds the loader with the
same arguments and skips the batches it already consumed.
"""

from __future__ import annotations

import logging
import os
import pathlib
import random
import re
import sys
import warnings

import torch
import webdataset as wds
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from perceiver.data import codecs
from perceiver.data.collate import collate
from perceiver.data.errors import CorruptSampleError, MissingShardsError
from perceiver.data.shards import is_local_path, iter_raw_samples, local_path
from perceiver.data.sources import SOURCES

logger = logging.getLogger(__name__)
MODES = ("epoch", "resampled")
_SHARD_NAME = re.compile(r"^(?P<name>.+)-(?P<split>[^-]+)-\d{6}\.tar$")


class CorruptSampleWarning(RuntimeWarning):
    """A sample was skipped because it could not be read or decoded."""


def find_shards(directory, name: str, split: str) -> list[str]:
    """The paths of ``NAME-{split}-%06d.tar`` under ``directory``, sorted; raises when there are none."""
    directory = pathlib.Path(directory)
    paths = sorted(str(path) for path in directory.glob(f"{name}-{split}-[0-9][0-9][0-9][0-9][0-9][0-9].tar"))
    if not paths:
        raise MissingShardsError(
            f"no shards {name}-{split}-NNNNNN.tar in {directory}; build them with: "
            f"python -m perceiver.data build {name} --out {directory} --split {split}"
        )
    return paths


def expand_shards(shards) -> list[str]:
    """Shard URLs, as webdataset reads them: a path or URL, a brace pattern (``NAME-train-{000000..000059}.tar``),
    several joined by ``::``, or a list (or tuple) of any of those; ``pathlib.Path`` objects too."""
    items = [shards] if isinstance(shards, (str, os.PathLike)) else list(shards)
    urls = []
    for item in items:
        if not isinstance(item, (str, os.PathLike)):
            raise TypeError(f"shards: expected paths or URLs (str or os.PathLike), got {type(item).__name__}")
        urls.extend(wds.shardlists.expand_urls(os.fspath(item)))
    return urls


def build_command(missing: str) -> str:
    """The command that builds the shards a missing local path names (the generic form for other names)."""
    path = pathlib.Path(missing)
    match = _SHARD_NAME.match(path.name)
    if match and match["name"] in SOURCES:
        return f"python -m perceiver.data build {match['name']} --out {path.parent} --split {match['split']}"
    return "python -m perceiver.data build NAME --out DIR"


def distributed_position(rank: int | None = None, world_size: int | None = None) -> tuple[int, int]:
    """(rank, world size): the arguments, else torch.distributed when initialized, else env RANK/WORLD_SIZE, else
    (0, 1)."""
    if rank is not None or world_size is not None:
        if rank is None or world_size is None:
            raise ValueError(f"rank and world_size: pass both or neither, got rank={rank}, world_size={world_size}")
    elif torch.distributed.is_available() and torch.distributed.is_initialized():
        rank, world_size = torch.distributed.get_rank(), torch.distributed.get_world_size()
    else:
        rank, world_size = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    if not 0 <= rank < world_size:
        raise ValueError(f"rank: expected 0 <= rank < world_size={world_size}, got {rank}")
    return rank, world_size


def required_fields(shard: str) -> tuple[str, ...]:
    """Fields every sample of a shard must have: the dataset's own when the shard name names a known dataset."""
    match = _SHARD_NAME.match(pathlib.Path(shard).name)
    if match and match["name"] in SOURCES:
        return SOURCES[match["name"]].fields
    return ()


class CorruptCounter:
    """Samples skipped in this worker since the last batch; each skip is warned about with shard and key."""

    def __init__(self):
        self.count = 0

    def skip(self, shard: str, key: str, problem: str) -> None:
        self.count += 1
        message = f"skipping corrupt sample {key!r} in shard {shard}: {problem}"
        logger.warning(message)
        warnings.warn(message, CorruptSampleWarning, stacklevel=2)

    def note(self, shard: str, where: str, problem: str) -> None:
        """Report damage that costs no sample by itself (e.g. a skipped tar header); the sample it hit is counted
        when it turns out incomplete."""
        message = f"shard {shard}: {problem} at {where}"
        logger.warning(message)
        warnings.warn(message, CorruptSampleWarning, stacklevel=2)

    def take(self) -> int:
        count, self.count = self.count, 0
        return count


def decode_sample(raw: dict, *, required: tuple[str, ...], sample_rate: int, max_audio_seconds: float | None,
                  max_text_bytes: int | None) -> dict:
    """Raw fields (bytes) → decoded sample; raises ``CorruptSampleError`` naming what is wrong."""
    if raw.get("__damaged__"):
        raise CorruptSampleError(raw["__damaged__"])
    missing = [field for field in required if field not in raw]
    if missing:
        raise CorruptSampleError(f"missing field(s) {missing} (has {sorted(f for f in raw if not f.startswith('__'))})")
    sample = {"key": raw["__key__"]}
    try:
        for field, data in raw.items():
            if field in codecs.IMAGE_FIELDS:
                sample["image"] = codecs.decode_image(data, field)
            elif field in codecs.AUDIO_FIELDS:
                audio = codecs.decode_audio(data, sample_rate=sample_rate)
                if max_audio_seconds is not None:
                    audio = audio[: int(round(max_audio_seconds * sample_rate))]
                sample["audio"] = audio
            elif field == "txt":
                text = codecs.decode_text(data)
                sample["text"] = text[:max_text_bytes] if max_text_bytes is not None else text
            elif field == "cls":
                sample["label"] = codecs.decode_label(data)
            elif field == "json":
                sample["meta"] = codecs.decode_json(data)
    except Exception as error:  # any decoder failure means this sample's bytes are bad, not that the run is
        raise CorruptSampleError(f"{field} does not decode ({type(error).__name__}: {error})") from error
    if not {"image", "audio", "text", "label"} & set(sample):
        raise CorruptSampleError(f"no image, audio, text or label field (has {sorted(raw)})")
    return sample


class ShardStream(IterableDataset):
    """The per-worker pipeline; see the module docstring. ``set_epoch`` changes the order of the next pass."""

    def __init__(self, shards, *, batch_size, mode, shuffle, shuffle_buffer, seed, epoch, rank, world_size,
                 sample_rate, max_audio_seconds, max_text_bytes, drop_last, required):
        super().__init__()
        self.shards = list(shards)
        self.batch_size, self.mode, self.shuffle, self.shuffle_buffer = batch_size, mode, shuffle, shuffle_buffer
        self.seed, self.epoch, self.rank, self.world_size = seed, epoch, rank, world_size
        self.decode_args = dict(sample_rate=sample_rate, max_audio_seconds=max_audio_seconds,
                                max_text_bytes=max_text_bytes)
        self.drop_last, self.required = drop_last, required

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _worker(self) -> tuple[int, int]:
        info = get_worker_info()
        return (info.id, info.num_workers) if info is not None else (0, 1)

    def shard_urls(self):
        worker, num_workers = self._worker()
        if self.mode == "resampled":
            rng = random.Random(f"{self.seed}/{self.epoch}/{self.rank}/{worker}/shards")
            while True:
                yield rng.choice(self.shards)
        shards = list(self.shards)
        if self.shuffle:
            random.Random(f"{self.seed}/{self.epoch}/shards").shuffle(shards)  # same on every rank and worker
        yield from shards[self.rank :: self.world_size][worker::num_workers]

    def __iter__(self):
        worker, _ = self._worker()
        counter = CorruptCounter()
        rng = random.Random(f"{self.seed}/{self.epoch}/{self.rank}/{worker}/samples")
        pipeline = wds.DataPipeline(
            lambda: self.shard_urls(),
            lambda urls: self._read(urls, counter),
            lambda samples: self._shuffle(samples, rng) if self.shuffle else samples,
            lambda samples: self._batch(samples, counter),
        )
        return iter(pipeline)

    def _read(self, urls, counter: CorruptCounter):
        for url in urls:
            required = self.required if self.required is not None else required_fields(url)
            try:
                for raw in iter_raw_samples(url, lambda where, problem, url=url: counter.note(url, where, problem)):
                    try:
                        sample = decode_sample(raw, required=required, **self.decode_args)
                    except CorruptSampleError as error:
                        counter.skip(url, raw["__key__"], str(error))
                        continue
                    yield sample
                    if "__truncated_after__" in raw:  # this sample is whole, so the cut lost (at least) the next
                        counter.skip(url, f"<the sample after {raw['__key__']}>", raw["__truncated_after__"])
            except OSError as error:  # an unreadable shard file: report it and go on with the next shard
                counter.skip(url, "<whole shard>", f"{type(error).__name__}: {error}")

    def _shuffle(self, samples, rng: random.Random):
        buffer = []
        for sample in samples:
            buffer.append(sample)
            if len(buffer) >= self.shuffle_buffer:
                chosen = rng.randrange(len(buffer))
                buffer[chosen], buffer[-1] = buffer[-1], buffer[chosen]  # the last fills the chosen one's place
                yield buffer.pop()
        rng.shuffle(buffer)
        yield from buffer

    def _batch(self, samples, counter: CorruptCounter):
        """Batches of ``batch_size`` samples, each with the skips counted up to when it leaves.

        A full batch waits until the next sample has been read (or the stream has ended) before it leaves, so that
        skips found after a worker's last sample still reach a batch, also when ``drop_last`` drops a partial one.
        """
        full, batch = None, []
        for sample in samples:
            if full is not None:
                yield collate(full, corrupt=counter.take())
                full = None
            batch.append(sample)
            if len(batch) == self.batch_size:
                full, batch = batch, []
        for last in (full, batch if not self.drop_last else None):
            if last:
                yield collate(last, corrupt=counter.take())


def make_loader(
    shards,
    *,
    batch_size: int,
    mode: str = "epoch",
    shuffle: bool = True,
    shuffle_buffer: int = 1000,
    seed: int = 0,
    epoch: int = 0,
    num_workers: int = 0,
    sample_rate: int = 16000,
    max_audio_seconds: float | None = None,
    max_text_bytes: int | None = None,
    drop_last: bool = False,
    rank: int | None = None,
    world_size: int | None = None,
    required: tuple[str, ...] | None = None,
    pin_memory: bool = False,
) -> DataLoader:
    """An iterable of batches (dicts; see ``perceiver.data.collate``) over ``shards``.

    ``shards`` is any webdataset URL or a list of them: local paths, brace patterns
    (``data/fashion-mnist/fashion-mnist-train-{000000..000059}.tar``), ``pipe:CMD`` (e.g. ``pipe:aws s3 cp
    s3://bucket/x.tar -``), ``http(s)://`` (read through curl), several joined by ``::``. Only local paths are
    checked for existence up front; a remote shard that cannot be read is reported and skipped like a corrupt one.

    ``rank``/``world_size`` default to torch.distributed or env RANK/WORLD_SIZE. ``required`` overrides the fields
    a sample must have (default: the dataset's fields when the shard names a known dataset). Call
    ``loader.dataset.set_epoch(e)`` or build a new loader to change the epoch. A worker that yields no batch at all
    (every sample it read was corrupt) can only warn about its skips, not count them in a batch.
    """
    shards = expand_shards(shards)
    if not shards:
        raise MissingShardsError("shards: expected at least one shard path or URL, got none")
    missing = [shard for shard in shards if is_local_path(shard) and not os.path.exists(local_path(shard))]
    if missing:
        raise MissingShardsError(f"shards: {len(missing)} of {len(shards)} local path(s) do not exist, first "
                                 f"{missing[0]}; build them with: {build_command(local_path(missing[0]))}")
    if mode not in MODES:
        raise ValueError(f"mode: expected one of {MODES}, got {mode!r}")
    if batch_size < 1 or shuffle_buffer < 1 or num_workers < 0:
        raise ValueError(f"batch_size, shuffle_buffer: expected >= 1 and num_workers >= 0, got {batch_size}, "
                         f"{shuffle_buffer}, {num_workers}")
    rank, world_size = distributed_position(rank, world_size)
    stream = ShardStream(shards, batch_size=batch_size, mode=mode, shuffle=shuffle, shuffle_buffer=shuffle_buffer,
                         seed=seed, epoch=epoch, rank=rank, world_size=world_size, sample_rate=sample_rate,
                         max_audio_seconds=max_audio_seconds, max_text_bytes=max_text_bytes, drop_last=drop_last,
                         required=required)
    # Forked workers start at once with the parent's imports (scipy, PIL, soundfile); elsewhere the default.
    context = "fork" if num_workers and sys.platform.startswith("linux") else None
    return DataLoader(stream, batch_size=None, num_workers=num_workers, multiprocessing_context=context,
                      pin_memory=pin_memory)
