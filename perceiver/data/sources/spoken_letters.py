"""Spoken letters: 1.8k real recordings of letters and syllables in 24 languages from Debian ``klettres-data``.

A sample is a waveform, its letter or syllable as text, and its language as the label. The ``test`` split is a
fixed 15% of each language's clips (klettres names no speakers, so the split is by clip).
"""

from __future__ import annotations

import pathlib


from perceiver.data.sources.base import Source, seeded_order, stored_audio

TEST_FRACTION = 0.15


class SpokenLetters(Source):
    name = "spoken-letters"
    splits = ("train", "test")
    fields = ("flac", "txt", "cls", "json")
    install = "apt-get install -y --no-install-recommends klettres-data"
    default_root = pathlib.Path("/usr/share/klettres")

    def __init__(self, root=None):
        super().__init__(root)
        self._clips: dict[str, list[pathlib.Path]] | None = None

    def clips(self) -> dict[str, list[pathlib.Path]]:
        """Language → its .ogg clips (sorted), for the languages that have any."""
        if self._clips is None:
            self._clips = self._find_clips()
        return self._clips

    def _find_clips(self) -> dict[str, list[pathlib.Path]]:
        root = self.require(self.root or self.default_root)
        by_language = {}
        for language in sorted(path.name for path in root.iterdir() if path.is_dir()):
            found = sorted((root / language).glob("*/*.ogg"))
            if found:
                by_language[language] = found
        if not by_language:
            self.require(root / "en" / "alpha" / "A.ogg")
        return by_language

    def languages(self) -> list[str]:
        return list(self.clips())

    def specs(self, split, seed):
        specs = []
        for language, paths in self.clips().items():
            ordered = seeded_order(paths, 0, f"{self.name}/{language}")
            count = max(1, round(len(ordered) * TEST_FRACTION))
            chosen = ordered[:count] if split == "test" else ordered[count:]
            specs += [(language, str(path)) for path in sorted(chosen)]
        return seeded_order(specs, seed, f"{self.name}/{split}")

    def make(self, spec):
        import soundfile

        language, path = spec
        path = pathlib.Path(path)
        waveform, rate = soundfile.read(path, dtype="float32", always_2d=True)
        text = path.stem.split("-")[0]  # "a-01.ogg" is the first recording of "a"
        kind = path.parent.name  # "alpha" (letters) or "syllab" (syllables)
        key = f"{language}_{kind}_{path.stem}".replace(".", "_")
        return {"key": key, **stored_audio(waveform.mean(axis=1), rate), "text": text,
                "label": self.languages().index(language),
                "meta": {"language": language, "kind": kind, "file": path.name}}


