"""Whether a clip that holds no speech can be told from one that does, by its level alone or by a spoken-digits
model's confidence: the measure behind ``experiments.predict_digits`` skipping digital silence only.

Two figures per clip, each summarised per kind of clip by its quantiles:

- its frame range: how far its loudest 10-ms frame lies above its quietest tenth of frames, in dB, after the offset
  is removed: the cue of an energy-based speech detector;
- with a model, its top probability: the model's largest class probability, averaged over the training run's
  playback speeds as ``experiments.predict_digits`` scores a file.

Speech is the shards' clips under some of ``benchmarks.recording_conditions``' conditions; no speech is one-second
clips of white, pink and brown noise, mains hum over a faint hiss, and digital silence, seeded::

    python -m benchmarks.speech_or_noise --model runs/spoken-digits/model --out benchmarks/results/speech_or_noise

Prints a Markdown table (and writes it, with the figures as JSON, to OUT.md and OUT.json). A detector works where
every speech row lies above every no-speech row.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from benchmarks.recording_conditions import CONDITIONS, batches_of
from benchmarks.report import check_models, provenance, publish
from experiments.predict_digits import scoring_settings
from experiments.spoken_digits import SAMPLE_RATE, add_eval_data_args, cut_to_speech, plain_and_speed_averaged_log_probs
from perceiver.augment import add_hum, colored_noise, remove_dc
from perceiver.config import load_model
from perceiver.data import find_shards
from perceiver.threads import set_threads

QUANTILES = (0.0, 0.01, 0.05, 0.5, 0.95, 1.0)
NOISE_EXPONENTS = {"white": 0.0, "pink": 1.0, "brown": 2.0}  # power falls as 1 / f ** exponent
FRAME = SAMPLE_RATE // 100  # 10 ms, the frames of the cut to speech


def frame_range_db(audio: torch.Tensor, pad_mask: torch.Tensor) -> torch.Tensor:
    """Per clip (B,), its loudest frame's energy over its quietest tenth's (the 10th percentile), in dB, after the
    offset is removed; 0 for a clip of one value."""
    ranges = []
    for row, pad in zip(remove_dc(audio, pad_mask), pad_mask):
        real = row[~pad].double()
        frames = max(1, len(real) // FRAME)
        energy = torch.nn.functional.pad(real, (0, max(0, FRAME - len(real))))[: frames * FRAME]
        energy = energy.reshape(frames, FRAME).pow(2).mean(dim=1)
        loudest, quiet = energy.max(), torch.quantile(energy, 0.1)
        ranges.append(0.0 if loudest == 0 else float(10 * torch.log10(loudest / quiet.clamp(min=loudest * 1e-15))))
    return torch.tensor(ranges)


def no_speech(clips: int, seed: int) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """One-second clips (waveforms, pad masks) that hold no speech, by kind, from a generator seeded ``seed``."""
    generator = torch.Generator().manual_seed(seed)
    pad_mask = torch.zeros(clips, SAMPLE_RATE, dtype=torch.bool)
    kinds = {f"{color} noise": colored_noise(clips, SAMPLE_RATE, torch.full((clips,), exponent),
                                             generator=generator).float()
             for color, exponent in NOISE_EXPONENTS.items()}
    hiss = 1e-4 * colored_noise(clips, SAMPLE_RATE, torch.zeros(clips), generator=generator).float()
    kinds["mains hum over a faint hiss"] = add_hum(hiss, pad_mask, sample_rate=SAMPLE_RATE, probability=1.0,
                                                   snr_db=(-30.0, -30.0), generator=generator)
    kinds["digital silence"] = torch.zeros(clips, SAMPLE_RATE)
    return {kind: (audio, pad_mask) for kind, audio in kinds.items()}


@torch.no_grad()
def top_probability(model, audio: torch.Tensor, pad_mask: torch.Tensor, *, speech_margin: float,
                    speeds: tuple[float, ...]) -> torch.Tensor:
    """The model's largest class probability per clip, averaged over ``speeds`` as predict_digits scores a file."""
    max_samples = model.input_adapter.max_samples
    audio, pad_mask = cut_to_speech(audio, pad_mask, max_samples=max_samples, speech_margin=speech_margin)
    _, averaged = plain_and_speed_averaged_log_probs(model, audio, pad_mask, speeds=speeds, max_samples=max_samples)
    return averaged.exp().amax(dim=1).cpu()


def quantiles(values: torch.Tensor) -> list[float]:
    return [round(float(v), 3) for v in torch.quantile(values.double(), torch.tensor(QUANTILES, dtype=torch.float64))]


def markdown(report: dict) -> str:
    heads = " | ".join(f"q{round(100 * q)}" for q in QUANTILES)
    lines = ["# Speech or no speech: frame range and a model's confidence", "",
             f"- command: `{report['command']}`", f"- machine: {report['machine']}",
             f"- speech: {report['dataset']}'s evaluation splits", "",
             f"| clips | kind | n | frame range dB: {heads} | top probability: {heads} |",
             "| --- | --- | ---: | " + " | ".join("---:" for _ in range(2 * len(QUANTILES))) + " |"]
    for row in report["rows"]:
        probability = row.get("top_probability") or ["–"] * len(QUANTILES)
        lines.append(f"| {row['clips']} | {row['kind']} | {row['n']} | "
                     + " | ".join(f"{v:.1f}" for v in row["frame_range_db"]) + " | "
                     + " | ".join(v if isinstance(v, str) else f"{v:.2f}" for v in probability) + " |")
    speech = [row for row in report["rows"] if row["clips"] == "speech"]
    other = [row for row in report["rows"] if row["clips"] == "no speech"]
    lowest, highest = min(r["frame_range_db"][0] for r in speech), max(r["frame_range_db"][-1] for r in other)
    lines += ["", f"Frame range: the lowest speech clip {lowest:.1f} dB, the highest no-speech clip {highest:.1f} dB."]
    if "top_probability" in speech[0]:
        lowest = min(r["top_probability"][0] for r in speech)
        highest = max(r["top_probability"][-1] for r in other)
        lines.append(f"Top probability: the lowest speech clip {lowest:.2f}, the highest no-speech clip {highest:.2f}.")
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.speech_or_noise", description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=None,
                        help="a model folder saved by experiments.spoken_digits: adds its top probability")
    add_eval_data_args(parser)
    parser.add_argument("--splits", nargs="+", choices=("real", "engine", "test"), default=["real", "engine", "test"])
    parser.add_argument("--conditions", nargs="+", choices=tuple(CONDITIONS),
                        default=["clean", "trimmed-25", "noise", "hum"])
    parser.add_argument("--limit", type=int, default=300, help="speech clips per split (default: 300)")
    parser.add_argument("--no-speech-clips", type=int, default=100, help="clips of each kind without speech")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (default: the free cores)")
    parser.add_argument("--out", type=Path, default=None, help="write the table to OUT.md and the figures to OUT.json")
    args = parser.parse_args(argv)
    if args.limit < 1 or args.no_speech_clips < 2:
        parser.error(f"--limit, --no-speech-clips: expected at least 1 and 2 clips, got {args.limit}, "
                     f"{args.no_speech_clips}")
    check_models(parser, [args.model] if args.model else [], flag="--model")
    return args


def main(argv: list[str] | None = None) -> dict:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    set_threads(args.threads)
    model = load_model(args.model).eval() if args.model else None
    if model is not None:
        margin, speeds = scoring_settings(args.model)
        scoring = dict(speech_margin=margin, speeds=speeds)

    def row(clips: str, kind: str, pieces: list[tuple[torch.Tensor, torch.Tensor]]) -> dict:
        figures = {"clips": clips, "kind": kind, "n": sum(len(audio) for audio, _ in pieces),
                   "frame_range_db": quantiles(torch.cat([frame_range_db(*piece) for piece in pieces]))}
        if model is not None:
            figures["top_probability"] = quantiles(torch.cat([top_probability(model, *p, **scoring) for p in pieces]))
        print(f"{clips}, {kind}: {figures}", file=sys.stderr, flush=True)
        return figures

    rows = []
    for split in args.splits:
        shards = find_shards(args.data / args.dataset, args.dataset, split)
        for condition in args.conditions:
            pieces = [CONDITIONS[condition][1](batch["audio"], batch["audio_pad_mask"],
                                               torch.Generator().manual_seed(index))
                      for index, batch in enumerate(batches_of(shards, args.limit, 100))]
            rows.append(row("speech", f"{split}, {condition}", pieces))
    for kind, piece in no_speech(args.no_speech_clips, seed=0).items():
        rows.append(row("no speech", kind, [piece]))
    return publish({**provenance("benchmarks.speech_or_noise", argv), "dataset": args.dataset,
                    "rows": rows}, markdown, args.out)


if __name__ == "__main__":
    main()
