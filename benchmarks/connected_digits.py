"""Spoken-digits models on digit words cut from another real speaker's connected speech.

The ten real recordings the experiment reports (Debian's ``asterisk-core-sounds-en-wav``) are one woman saying each
digit alone. The source distribution of pocketsphinx 5.1.1 (PyPI; read as a tarball, never installed) ships test
recordings of a man's voice (median pitch 86-162 Hz over the words) that hold twelve digit words: the digit string
"two nine three four zero" (``test/data/tidigits/dhd.2934z.raw``) and card names such as "five five" and "eight of
spades four of clubs seven of hearts" (``test/data/cards/``, whose transcriptions name them). ``WORDS`` gives each
word's span as pocketsphinx's own decoder found it (its default US English model; the decoded words match the
transcriptions and the digit string's file name, card 2's "four" decoded as its homophone "for"). Each word is cut
with ``CONTEXT`` seconds either side, written as ``DIGIT_RECORDING_INDEX.wav``, and every model scores the folder
exactly as ``experiments.predict_digits`` scores recordings.

Words said within a phrase are shorter than words said alone and blend into their neighbours, so this is harder than
the task trained for; and twelve words of one speaker are a coarse check of real speech, not a measure of real
speakers in general (one word is 8.3 points). Fetch the sdist once, then::

    pip download --no-deps --no-binary pocketsphinx pocketsphinx==5.1.1 -d ~/.cache/perceiver/sources
    python -m benchmarks.connected_digits runs/spoken-digits/model [MODEL ...] --out benchmarks/results/connected_digits

Prints a Markdown table and writes it, with every prediction as JSON, to OUT.md and OUT.json.
"""

from __future__ import annotations

import argparse
import io
import sys
import tarfile
from pathlib import Path

import numpy as np
import soundfile

from benchmarks.report import check_models, provenance, publish, score_recordings
from experiments.spoken_digits import CLASSES
from perceiver.data.sources.base import source_cache

SDIST = "pocketsphinx-5.1.1.tar.gz"
# The sdist, and no wheel, of pocketsphinx alone: `--no-binary :all:` would also build its build tools (Cython) from
# source to read its metadata, minutes on 2 cores, where this takes about 20 s and fetches the same bytes.
FETCH = "pip download --no-deps --no-binary pocketsphinx pocketsphinx==5.1.1"
RAW_SAMPLE_RATE = 16000  # the sdist's .raw files: headerless 16-bit little-endian mono at 16 kHz
CONTEXT = 0.05  # seconds kept either side of a word's span: its edges, as pocketsphinx's 10 ms frames place them
# (recording in the sdist, word, start s, end s)
WORDS: tuple[tuple[str, str, float, float], ...] = (
    ("test/data/tidigits/dhd.2934z.raw", "two", 0.22, 0.39),
    ("test/data/tidigits/dhd.2934z.raw", "nine", 0.40, 0.64),
    ("test/data/tidigits/dhd.2934z.raw", "three", 0.65, 0.87),
    ("test/data/tidigits/dhd.2934z.raw", "four", 0.88, 1.12),
    ("test/data/tidigits/dhd.2934z.raw", "zero", 1.13, 1.61),
    ("test/data/cards/002.wav", "four", 0.06, 0.62),
    ("test/data/cards/003.wav", "seven", 0.06, 0.56),
    ("test/data/cards/004.wav", "five", 0.18, 0.71),
    ("test/data/cards/004.wav", "five", 0.83, 1.23),
    ("test/data/cards/005.wav", "eight", 0.19, 0.39),
    ("test/data/cards/005.wav", "four", 1.25, 1.53),
    ("test/data/cards/005.wav", "seven", 2.21, 2.62),
)


def read_recording(data: bytes, name: str) -> tuple[np.ndarray, int]:
    """A recording of the sdist as float32 mono samples and their rate."""
    if name.endswith(".raw"):
        return np.frombuffer(data, dtype="<i2").astype(np.float32) / 32768, RAW_SAMPLE_RATE
    samples, sample_rate = soundfile.read(io.BytesIO(data), dtype="float32", always_2d=True)
    return samples.mean(axis=1), sample_rate


def cut_words(sdist: Path, out_dir: Path) -> list[Path]:
    """Write each word of ``WORDS`` from ``sdist`` to ``out_dir`` as DIGIT_RECORDING_INDEX.wav; their paths."""
    recordings = {}
    with tarfile.open(sdist) as tar:
        root = tar.getnames()[0].split("/")[0]
        for name in sorted({name for name, *_ in WORDS}):
            member = tar.extractfile(f"{root}/{name}")
            if member is None:
                raise ValueError(f"sdist: expected a file {root}/{name} in {sdist}")
            recordings[name] = read_recording(member.read(), name)
    paths = []
    for index, (name, word, start, end) in enumerate(WORDS):
        samples, sample_rate = recordings[name]
        first, last = max(0, round((start - CONTEXT) * sample_rate)), round((end + CONTEXT) * sample_rate)
        path = out_dir / f"{CLASSES.index(word)}_{Path(name).stem.replace('.', '-')}_{index}.wav"
        soundfile.write(path, samples[first:last], sample_rate, subtype="FLOAT")
        paths.append(path)
    return paths


def markdown(report: dict) -> str:
    words = len(WORDS)
    lines = ["# Spoken digits on words cut from another real speaker's connected speech", "",
             f"`{report['command']}` ({report['machine']}); {words} words of pocketsphinx 5.1.1's test recordings.", "",
             "| model | right, averaged over speeds | right, plain | missed, averaged over speeds (said → taken "
             "for) |",
             "| --- | ---: | ---: | --- |"]
    for row in report["models"]:
        accuracy = row["accuracy"]
        missed = ", ".join(f"{CLASSES[p['label']]} → {CLASSES[p['digit']]}" for p in row["predictions"]
                           if p["digit"] != p["label"]) or "none"
        lines.append(f"| {row['model']} | {accuracy['speed_averaged_hits']} of {words} | "
                     f"{accuracy['plain_hits']} of {words} | {missed} |")
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.connected_digits", description=__doc__.splitlines()[0])
    parser.add_argument("models", type=Path, nargs="+", help="model folders saved by experiments.spoken_digits")
    parser.add_argument("--sdist", type=Path, default=None,
                        help=f"the pocketsphinx sdist (default: {SDIST} in $PERCEIVER_DATA_SOURCES or "
                             "~/.cache/perceiver/sources)")
    parser.add_argument("--words-dir", type=Path, default=None,
                        help="also keep the cut words here, for experiments.predict_digits or a listen")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (default: the free cores)")
    parser.add_argument("--out", type=Path, default=None, help="write the table to OUT.md and the figures to OUT.json")
    args = parser.parse_args(argv)
    args.sdist = args.sdist or source_cache() / SDIST
    if not args.sdist.is_file():
        parser.error(f"--sdist: expected the pocketsphinx 5.1.1 sdist at {args.sdist}; fetch it with "
                     f"{FETCH} -d {args.sdist.parent}")
    check_models(parser, args.models)
    return args


def main(argv: list[str] | None = None) -> dict:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    _, models = score_recordings(args.models, lambda folder: cut_words(args.sdist, folder), words_dir=args.words_dir,
                                 threads=args.threads)
    return publish({**provenance("benchmarks.connected_digits", argv), "models": models}, markdown, args.out)


if __name__ == "__main__":
    main()
