"""Spoken digits: espeak-ng speech over many voices, rates and pitches, plus one real speaker from Asterisk.

A voice is an English dialect × a voice variant (the speaker character). The ``test`` split holds out whole
variants, so its speakers are never heard in training under any dialect; the held-out variants are fixed (not
seeded) so that every run tests on the same voices. ``real`` is Asterisk's recorded digits 0–9 (Debian
``asterisk-core-sounds-en-wav``, one human speaker, 8 kHz): a real-speech test of a model trained on synthetic speech.
"""

from __future__ import annotations

import pathlib
import random
import re

from perceiver.data.sources.base import Source, seeded_order, stored_audio
from perceiver.data.sources.espeak import INSTALL as ESPEAK_INSTALL
from perceiver.data.sources.espeak import synthesizer

WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
TEST_VARIANT_FRACTION = 0.2
ASTERISK_INSTALL = "apt-get install -y --no-install-recommends asterisk-core-sounds-en-wav"
ASTERISK_ROOTS = (pathlib.Path("/usr/share/asterisk/sounds/en_US_f_Allison/digits"),
                  pathlib.Path("/usr/share/asterisk/sounds/en/digits"))


def safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9-]+", "_", text)


def split_variants(variants: list[str]) -> tuple[list[str], list[str]]:
    """(train, test) variants: a fixed 20% of the variants are test speakers."""
    ordered = seeded_order(sorted(variants), 0, "spoken-digits/variants")
    count = max(1, round(len(ordered) * TEST_VARIANT_FRACTION))
    return sorted(ordered[count:]), sorted(ordered[:count])


class SpokenDigits(Source):
    name = "spoken-digits"
    splits = ("train", "test", "real")
    fields = ("flac", "cls", "json")
    install = ESPEAK_INSTALL

    def specs(self, split, seed):
        if split == "real":
            root = self._asterisk_root()
            return [("real", digit, str(root / f"{digit}.wav")) for digit in range(10)]
        espeak = synthesizer()
        train, test = split_variants(espeak.variants())
        variants = train if split == "train" else test
        specs = []
        for dialect in espeak.english_dialects():
            for variant in variants:
                for digit in range(10):
                    rng = random.Random(f"{seed}/{dialect}/{variant}/{digit}")
                    specs.append((split, digit, f"{dialect}+{variant}", rng.randint(110, 220), rng.randint(20, 80)))
        return seeded_order(specs, seed, f"{self.name}/{split}")

    def _asterisk_root(self) -> pathlib.Path:
        roots = (self.root,) if self.root else ASTERISK_ROOTS
        for root in roots:
            if (root / "0.wav").exists():
                return root
        from perceiver.data.errors import DataSourceError

        raise DataSourceError(self.name, f"no Asterisk digits/0.wav under {', '.join(map(str, roots))}",
                              ASTERISK_INSTALL)

    def make(self, spec):
        if spec[0] == "real":
            import soundfile

            _, digit, path = spec
            waveform, rate = soundfile.read(path, dtype="int16")
            return {"key": f"asterisk_allison_{digit}", **stored_audio(waveform, rate), "label": digit,
                    "meta": {"voice": "asterisk-allison", "word": WORDS[digit], "speech": "real"}}
        _, digit, voice, rate, pitch = spec
        espeak = synthesizer()
        waveform = espeak.speak(WORDS[digit], voice=voice, rate=rate, pitch=pitch)
        return {"key": f"{safe(voice)}_{digit}", **stored_audio(waveform, espeak.sample_rate), "label": digit,
                "meta": {"voice": voice, "word": WORDS[digit], "rate": rate, "pitch": pitch, "speech": "espeak-ng"}}


def digit_waveforms(source: SpokenDigits, split: str, seed: int) -> dict[int, list]:
    """Specs of each digit's utterances in a split (av-digits pairs images with them)."""
    by_digit: dict[int, list] = {digit: [] for digit in range(10)}
    for spec in source.specs(split, seed):
        by_digit[spec[1]].append(spec)
    return by_digit


