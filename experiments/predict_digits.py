"""Name the digit spoken in each audio file with a model saved by ``experiments.spoken_digits``.

The model is the ``model`` folder in the experiment's ``--out`` (one model's, or with ``--members`` the ensemble's)::

    python -m experiments.predict_digits runs/spoken-digits/model recordings/*.wav
    python -m experiments.predict_digits runs/spoken-digits/model recordings/ --json predictions.json

Each file that libsndfile reads (WAV, FLAC, OGG; any sample rate; its channels averaged) is resampled to the model's
rate, freed of any offset, cut to where it speaks with the margin the model was trained with, and scored as the
experiment's evaluation scores a clip: on its log-probabilities averaged over the training run's playback speeds
(``--speeds`` chooses others; ``--speeds 1`` scores each clip once), with the plain prediction beside it. Folders
are searched for audio files. When every file's name begins with its digit followed by anything but a letter or
digit (``7.wav``, ``7_jackson_12.wav``), the accuracy is printed too, plain and speed-averaged, with each digit's.
A file that cannot be read, is too short to hear or holds only digital silence is skipped: named with its reason,
counted, and listed under ``skipped`` in the JSON; the others are still scored. Only when no file is left is it an
error. A file of noise alone is scored like speech: the model names a digit for it.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

import torch
from tqdm import tqdm

from experiments.spoken_digits import (CLASSES, EVAL_SPEEDS, SPEECH_MARGIN, cut_to_speech,
                                       plain_and_speed_averaged_log_probs)
from perceiver.config import load_model
from perceiver.data.codecs import decode_audio
from perceiver.data.collate import pad_sequences
from perceiver.files import atomic_write_text
from perceiver.threads import set_threads
from perceiver.training.checkpoint import LATEST, load_checkpoint

AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".oga", ".aiff", ".aif")
# A file name that begins with one digit and then anything but a letter or digit (or ends there): its label.
DIGIT_IN_NAME = re.compile(r"(\d)(?![0-9a-z])", re.IGNORECASE)


def find_recordings(paths: list[str | Path]) -> list[Path]:
    """The files named and the audio files under the folders named (sorted), each once, in order."""
    found: list[Path] = []
    for path in map(Path, paths):
        if path.is_dir():
            inside = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in AUDIO_SUFFIXES)
            if not inside:
                raise FileNotFoundError(f"recordings: no audio files ({', '.join(AUDIO_SUFFIXES)}) under {path}")
            found.extend(inside)
        elif path.is_file():
            found.append(path)
        else:
            raise FileNotFoundError(f"recordings: expected an audio file or a folder, got {path}, which does not exist")
    return list(dict.fromkeys(found))


def digit_in_name(path: Path) -> int | None:
    """The digit a file's name begins with (``7.wav``, ``7_jackson_12.wav``), or None."""
    match = DIGIT_IN_NAME.match(path.name)
    return int(match.group(1)) if match else None


def read_recording(path: Path, sample_rate: int, min_samples: int) -> torch.Tensor:
    """A recording as a float32 mono waveform (T,) at ``sample_rate``; a clear error for what cannot be heard."""
    try:
        waveform = decode_audio(path.read_bytes(), sample_rate=sample_rate)
    except Exception as error:  # libsndfile's errors name an in-memory buffer, not the file: keep their reason
        reason = getattr(error, "error_string", None) or error
        raise ValueError(f"recordings: could not read {path} as audio ({reason})") from error
    if len(waveform) < min_samples:
        raise ValueError(f"recordings: expected at least {min_samples} samples at {sample_rate} Hz "
                         f"({min_samples / sample_rate * 1000:.0f} ms) in {path}, got {len(waveform)}")
    # A file of one value (digital silence) holds nothing to hear, yet the model would name a digit for it. Noise
    # alone cannot be told from speech this simply: whispered or tightly trimmed words span as few decibels from
    # frame to frame as pink or brown noise does (docs/exps.md), so only the exact case is skipped.
    if waveform.min() == waveform.max():
        raise ValueError(f"recordings: expected sound in {path}, got {len(waveform)} samples that all hold "
                         f"{float(waveform[0]):g} (digital silence)")
    return torch.from_numpy(waveform)


def read_recordings(paths: list[Path], sample_rate: int, min_samples: int
                    ) -> tuple[list[Path], list[torch.Tensor], list[dict]]:
    """The recordings that can be heard (their paths and waveforms, in order) and the ones skipped, each with its
    reason. One bad file in a folder of hundreds costs that file, not the run; with none left, it is an error."""
    heard, waveforms, skipped = [], [], []
    for path in paths:
        try:
            waveforms.append(read_recording(path, sample_rate, min_samples))
            heard.append(path)
        except ValueError as error:
            skipped.append({"file": str(path), "reason": str(error)})
            print(f"skipped: {error}", file=sys.stderr)
    if not heard:  # one file: its own reason; several: each is named above
        raise ValueError(skipped[0]["reason"] if len(skipped) == 1 else
                         f"recordings: none of the {len(skipped)} files can be scored (each named above)")
    return heard, waveforms, skipped


def run_settings(model_dir: Path) -> dict:
    """The flags of the run that trained a model (``--speech-margin``, ``--eval-speeds``, ...), from the checkpoint
    of the run folder it sits in (an ensemble's: its first member's run, ``member-0``); empty for a model moved out
    of its run folder."""
    for checkpoint in (model_dir.parent / LATEST, model_dir.parent / "member-0" / LATEST):
        if checkpoint.is_file():
            return load_checkpoint(checkpoint).get("run_config", {})
    return {}


def scoring_settings(model_dir: Path, *, speech_margin: float | None = None,
                     speeds: tuple[float, ...] | None = None) -> tuple[float, tuple[float, ...]]:
    """The margin of the cut to speech and the playback speeds to score a model's clips with: the values given, else
    those of the run that trained it (``run_settings``), else the experiment's defaults."""
    trained_with = run_settings(model_dir)
    margin = speech_margin if speech_margin is not None else trained_with.get("speech_margin", SPEECH_MARGIN)
    return margin, tuple(speeds or trained_with.get("eval_speeds", EVAL_SPEEDS))


@torch.no_grad()
def classify(model: torch.nn.Module, waveforms: list[torch.Tensor], *, speeds: tuple[float, ...],
             speech_margin: float, batch_size: int = 32, progress: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Class log-probabilities (N, 10) of each waveform (at the model's rate), plain and averaged over ``speeds``:
    each clip cut to its speech as in training. A clip's scores do not depend on the others in its batch."""
    max_samples = model.input_adapter.max_samples
    plain, averaged = [], []
    for start in tqdm(range(0, len(waveforms), batch_size), desc="recordings", unit="batch", disable=not progress):
        audio, pad_mask = pad_sequences([w.numpy() for w in waveforms[start:start + batch_size]], 0.0, torch.float32)
        audio, pad_mask = cut_to_speech(audio, pad_mask, max_samples=max_samples, speech_margin=speech_margin)
        scores = plain_and_speed_averaged_log_probs(model, audio, pad_mask, speeds=speeds, max_samples=max_samples)
        plain.append(scores[0].cpu())
        averaged.append(scores[1].cpu())
    empty = torch.empty(0, len(CLASSES))
    return torch.cat(plain) if plain else empty, torch.cat(averaged) if averaged else empty


def accuracy_report(labels: list[int], plain: torch.Tensor, averaged: torch.Tensor) -> dict:
    """Hits of both predictions over all files and per digit."""
    labels_tensor = torch.tensor(labels)
    report = {"files": len(labels), "plain_hits": int((plain.argmax(1) == labels_tensor).sum()),
              "speed_averaged_hits": int((averaged.argmax(1) == labels_tensor).sum()), "per_digit": {}}
    for digit in range(len(CLASSES)):
        rows = labels_tensor == digit
        if rows.any():
            report["per_digit"][str(digit)] = {
                "files": int(rows.sum()), "plain_hits": int((plain[rows].argmax(1) == digit).sum()),
                "speed_averaged_hits": int((averaged[rows].argmax(1) == digit).sum())}
    return report


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m experiments.predict_digits", description=__doc__.splitlines()[0])
    parser.add_argument("model", type=Path, help="a model folder saved by experiments.spoken_digits (run/model)")
    parser.add_argument("recordings", nargs="+", help="audio files or folders of them")
    parser.add_argument("--speeds", type=float, nargs="+", default=None,
                        help=f"playback speeds whose log-probabilities are averaged, 1 alone for none (default: the "
                             f"training run's --eval-speeds, else {' '.join(map(str, EVAL_SPEEDS))})")
    parser.add_argument("--speech-margin", type=float, default=None,
                        help=f"seconds kept either side of the speech (default: the model's training run's, "
                             f"else {SPEECH_MARGIN})")
    parser.add_argument("--batch-size", type=int, default=32, help="recordings scored at once")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (default: the free cores)")
    parser.add_argument("--device", default=None, help="where the model runs (default: cuda if present, else cpu)")
    parser.add_argument("--json", type=Path, default=None, help="also write every prediction to this JSON file")
    args = parser.parse_args(argv)
    if args.speeds is not None and min(args.speeds) <= 0:
        parser.error(f"--speeds: expected positive speed factors, got {list(args.speeds)}")
    if args.speech_margin is not None and args.speech_margin < 0:
        parser.error(f"--speech-margin: expected seconds >= 0, got {args.speech_margin}")
    if args.batch_size < 1:
        parser.error(f"--batch-size: expected an int >= 1, got {args.batch_size}")
    try:
        args.device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    except RuntimeError as error:
        parser.error(f"--device: expected a device such as cpu, cuda or cuda:1, got {args.device!r} ({error})")
    if args.device.type == "cuda" and not torch.cuda.is_available():
        parser.error(f"--device: {args.device} asked for, but torch sees no CUDA device here")
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    set_threads(args.threads)
    model = load_model(args.model).eval().to(args.device)
    frontend = getattr(getattr(model, "input_adapter", None), "frontend", None)
    if frontend is None or "sample_rate" not in getattr(frontend, "config", {}):
        raise ValueError(f"model: expected a spoken-digits model (an audio input adapter) in {args.model}, "
                         f"got a {type(getattr(model, 'input_adapter', model)).__name__}")
    sample_rate = frontend.config["sample_rate"]
    margin, speeds = scoring_settings(args.model, speech_margin=args.speech_margin, speeds=args.speeds)
    found = find_recordings(args.recordings)
    paths, waveforms, skipped = read_recordings(found, sample_rate, frontend.n_fft)
    plain, averaged = classify(model, waveforms, speeds=speeds, speech_margin=margin,
                               batch_size=args.batch_size, progress=len(paths) > args.batch_size)
    labels = [digit_in_name(path) for path in paths]
    known = all(label is not None for label in labels)

    predictions = []
    for path, label, plain_row, row in zip(paths, labels, plain, averaged):
        digit = int(row.argmax())
        predictions.append({"file": str(path), "digit": digit, "probability": round(float(row[digit].exp()), 4),
                            "plain_digit": int(plain_row.argmax()), **({"label": label} if known else {})})
        mark = ("  right" if digit == label else f"  wrong (said {label})") if known else ""
        print(f"{path}\t{digit} ({CLASSES[digit]}, p={float(row[digit].exp()):.2f}){mark}")
    result = {"model": str(args.model), "speeds": list(speeds), "speech_margin": margin,
              "predictions": predictions, "skipped": skipped}
    if skipped:
        print(f"skipped {len(skipped)} of {len(found)} files (each named above with its reason); scored {len(paths)}")
    if known:
        report = accuracy_report(labels, plain, averaged)
        result["accuracy"] = report
        files = report["files"]
        print(f"accuracy over {files} files: {report['speed_averaged_hits'] / files:.1%} averaged over speeds "
              f"{list(speeds)}, {report['plain_hits'] / files:.1%} plain")
        for digit, row in report["per_digit"].items():
            print(f"  {digit} {CLASSES[int(digit)]:>5}: {row['speed_averaged_hits']}/{row['files']} "
                  f"({row['plain_hits']}/{row['files']} plain)")
    elif any(label is not None for label in labels):
        print("no accuracy: some file names do not begin with their digit")
    if args.json:
        atomic_write_text(args.json, json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
