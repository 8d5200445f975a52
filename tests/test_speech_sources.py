"""The speech synthesis engines of spoken-digits: each says a digit like speech, deterministically; splits hold
out whole voices and one whole engine; av-digits keeps its espeak-ng audio; a missing engine names its install.

Tests that need an engine fail (never skip) with the command that installs it.
"""

from __future__ import annotations

import random
import sys
import time

import numpy as np
import pytest

from perceiver.data import DataSourceError, get_source
from perceiver.data.sources import festival, flite, spoken_digits
from perceiver.data.sources.av_digits import AVDigits
from perceiver.data.sources.base import AUDIO_RATE, seeded_order, stored_audio
from perceiver.data.sources.espeak import Synthesizer, synthesizer
from perceiver.data.sources.spoken_digits import (ACCENT_SPELLINGS, ACCENTED_VOICES, ENGINES, HELD_OUT_ENGINE,
                                                  AccentedSpokenDigits, SpokenDigits, split_variants)


def made(source, spec):
    try:
        return source.make(spec)
    except DataSourceError as error:
        pytest.fail(f"speech engine missing: {error}")


def active_span(audio: np.ndarray) -> tuple[float, float]:
    """(seconds between the first and last 10 ms frame within 30 dB of the loudest, RMS of those frames / full
    scale)."""
    frames = audio[: len(audio) // 160 * 160].astype(np.float64).reshape(-1, 160) / 32768.0
    energy = (frames**2).mean(axis=1)
    loud = np.nonzero(energy > energy.max() * 1e-3)[0]
    return (loud[-1] - loud[0] + 1) * 0.01, float(np.sqrt(energy[loud[0]: loud[-1] + 1].mean()))


@pytest.mark.parametrize("engine", ["espeak-ng", *ENGINES])
def test_each_engine_says_a_digit_like_speech_and_the_same_way_twice(engine):
    source = AccentedSpokenDigits()  # its train split holds every training engine
    split = "engine" if engine == HELD_OUT_ENGINE else "train"
    specs = [s for s in source.specs(split, 0) if (len(s) == 5) == (engine == "espeak-ng")
             and (len(s) == 5 or s[2] == engine)]
    first, other = specs[0], next(s for s in specs if s[1] != specs[0][1])
    sample = made(source, first)
    assert sample["sample_rate"] == AUDIO_RATE and sample["audio"].dtype == np.int16
    assert sample["meta"]["speech"] == engine and sample["label"] == first[1]
    seconds, rms = active_span(sample["audio"])
    assert 0.15 < seconds < 2.0, f"{engine}: {seconds:.2f} s of speech in one digit"
    assert 0.01 < rms < 0.9, f"{engine}: RMS {rms:.3f} of full scale while speaking"
    made(source, other)  # another utterance in between must not change the next one
    assert np.array_equal(made(source, first)["audio"], sample["audio"])


def test_a_breathy_espeak_variant_says_the_same_from_servers_started_seconds_apart():
    """libespeak-ng seeds the noise of breathy variants (whisper, Demonic, f3, ...) from the clock when it starts:
    a build on another day must still give the same samples."""
    said = []
    for _ in range(2):
        server = Synthesizer()
        said.append([server.speak(digit, voice=voice, rate=160, pitch=50)
                     for voice in ("en+whisper", "en+Demonic") for digit in ("seven", "two")])
        server.close()
        time.sleep(1.1)  # the next server starts in another second of the clock
    assert all(np.array_equal(a, b) for a, b in zip(*said))


def test_engine_parameters_are_drawn_per_spec_and_change_with_the_seed():
    source = SpokenDigits()
    for name, engine in ENGINES.items():
        zero, again, one = (source.engine_specs(engine, "engine", seed) for seed in (0, 0, 1))
        assert zero == again and zero != one
        renditions = {}
        for spec in zero:
            renditions.setdefault((spec[1], spec[3]), set()).add(spec[5])
        assert all(len(drawn) > engine.renditions // 2 for drawn in renditions.values())  # a voice's renditions differ


@pytest.mark.parametrize("source", [SpokenDigits(), AccentedSpokenDigits()], ids=lambda source: source.name)
def test_splits_hold_out_whole_voices_and_one_whole_engine(source):
    specs = {split: source.specs(split, 0) for split in ("train", "test", "engine")}
    engine_of = lambda spec: "espeak-ng" if len(spec) == 5 else spec[2]  # noqa: E731
    voice_of = lambda spec: spec[2].split("+", 1)[1] if len(spec) == 5 else spec[3]  # noqa: E731
    for name in ("espeak-ng", *ENGINES):
        voices = {split: {voice_of(s) for s in found if engine_of(s) == name} for split, found in specs.items()}
        if name == HELD_OUT_ENGINE:
            assert not voices["train"] and not voices["test"] and len(voices["engine"]) == 2
        elif name == "festival-accented":  # AccentedSpokenDigits' training voices only
            accented = isinstance(source, AccentedSpokenDigits)
            assert len(voices["train"]) == (len(ACCENTED_VOICES) if accented else 0)
            assert not voices["test"] and not voices["engine"]
        else:
            assert voices["train"] and voices["test"] and voices["train"].isdisjoint(voices["test"])
            assert not voices["engine"]
    for found in specs.values():  # every digit equally often
        counts = np.bincount([s[1] for s in found], minlength=10)
        assert counts.min() == counts.max() > 0


def test_the_accented_dataset_adds_training_voices_and_keeps_every_other_sample_and_order():
    plain, accented = get_source("spoken-digits"), get_source("spoken-digits-accented")
    for split in ("test", "engine", "real"):
        assert accented.specs(split, 0) == plain.specs(split, 0)
    added = [s for s in accented.specs("train", 0) if len(s) == 6 and s[2] == "festival-accented"]
    assert len(added) == len(ACCENTED_VOICES) * 10 * ENGINES["festival-accented"].renditions
    assert sorted(accented.specs("train", 0), key=repr) == sorted(plain.specs("train", 0) + added, key=repr)


def test_an_accented_voice_reads_the_digit_respelled_in_its_own_language(monkeypatch):
    said = []
    monkeypatch.setattr(festival, "speak", lambda text, **kwargs: said.append((text, kwargs)) or
                        (np.zeros(160, np.int16), AUDIO_RATE))
    source = AccentedSpokenDigits()
    specs = [s for s in source.specs("train", 0) if len(s) == 6 and s[2] == "festival-accented"]
    sample = source.make(specs[0])
    _, digit, _, voice, _, params = specs[0]
    assert said == [(ACCENT_SPELLINGS[ACCENTED_VOICES[voice]][digit], {"voice": voice, **dict(params)})]
    assert sample["label"] == digit and sample["meta"]["word"] == spoken_digits.WORDS[digit]
    for spellings in ACCENT_SPELLINGS.values():  # ten distinct words each, in ASCII (the voices read other codes)
        assert len(set(spellings)) == 10 and all(word.isascii() for word in spellings)


def test_a_festival_voice_that_is_not_installed_names_its_package(monkeypatch):
    monkeypatch.setattr(festival, "voices", lambda: ["kal_diphone"])
    with pytest.raises(DataSourceError, match="voice czech_dita is not installed.*festvox-czech-dita"):
        festival.speak("uan", voice="czech_dita", stretch=1.0)


def old_espeak_specs(split, seed):
    """The espeak-only dataset's specs, as its source listed them before the other engines came."""
    espeak = synthesizer()
    train, test = split_variants(espeak.variants())
    specs = []
    for dialect in espeak.english_dialects():
        for variant in train if split == "train" else test:
            for digit in range(10):
                rng = random.Random(f"{seed}/{dialect}/{variant}/{digit}")
                specs.append((split, digit, f"{dialect}+{variant}", rng.randint(110, 220), rng.randint(20, 80)))
    return seeded_order(specs, seed, f"spoken-digits/{split}")


@pytest.mark.parametrize("split", ["train", "test"])
def test_av_digits_keeps_the_espeak_only_audio(split):
    source = AVDigits()
    assert source.speech.espeak_specs(split, 0) == old_espeak_specs(split, 0)
    pairs = source.specs(split, 0)[:3]
    espeak = synthesizer()
    for index, utterance in pairs:
        assert len(utterance) == 5  # (split, digit, dialect+variant, rate, pitch): espeak-ng
        _, digit, voice, rate, pitch = utterance
        sample = source.make((index, utterance))
        direct = espeak.speak(spoken_digits.WORDS[digit], voice=voice, rate=rate, pitch=pitch)
        expected = stored_audio(direct, espeak.sample_rate)["audio"]
        assert len(expected) > 0 and np.array_equal(sample["audio"], expected)
        assert sample["meta"]["voice"] == voice


def test_a_missing_engine_raises_with_its_install_command(monkeypatch):
    source = get_source("spoken-digits")
    by_engine = {}
    for spec in source.specs("train", 0) + source.specs("engine", 0):
        if len(spec) == 6:
            by_engine.setdefault(spec[2], spec)
    monkeypatch.setattr(flite.shutil, "which", lambda name: None)
    monkeypatch.setattr(festival.shutil, "which", lambda name: None)
    monkeypatch.setitem(sys.modules, "ttspico", None)  # import fails
    monkeypatch.setitem(sys.modules, "samtts", None)
    installs = {"flite": "apt-get install -y --no-install-recommends flite", "festival": "festvox-us-slt-hts",
                "pico": "pip install ttspico", "sam": "pip install samtts"}
    for name, install in installs.items():
        with pytest.raises(DataSourceError, match=install):
            source.make(by_engine[name])
