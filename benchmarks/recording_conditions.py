"""How saved spoken-digits models hold up under the recording conditions that real recordings bring and a
synthesiser's clips lack: a tight trim, a constant offset, clipping, mains hum, noise, a phone line.

Each condition is applied to the clips as they lie in the shards, before the experiment's own preparation, as a
recording arrives: then every clip is cut to its speech and scored as ``experiments.spoken_digits`` scores it, plain
and on its log-probabilities averaged over playback speeds (the margin and speeds of the run that trained the model,
as ``experiments.predict_digits`` reads them). Every condition is fixed and seeded, so two models meet the same
clips::

    python -m benchmarks.recording_conditions runs/spoken-digits/model --limit 600 --out benchmarks/results/conditions

Prints a Markdown table (and writes it, with the figures as JSON, to OUT.md and OUT.json). The conditions lie within
the ranges that training's augmentation draws from (``--trim``, ``--hum``, ``--clip``, ``--snr-db``,
``--telephone``) where that augmentation is on: the table shows whether a model learned to ignore them, not how it
meets a condition no training drew.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Callable

import torch
from tqdm import tqdm

from benchmarks.report import check_models, provenance, publish
from experiments.predict_digits import scoring_settings
from experiments.spoken_digits import SAMPLE_RATE, add_eval_data_args, cut_to_speech, plain_and_speed_averaged_log_probs
from perceiver.augment import add_hum, add_white_noise, clip_peaks, telephone_band, trim_to_speech
from perceiver.config import load_model
from perceiver.data import find_shards, make_loader
from perceiver.masks import zero_padding
from perceiver.threads import set_threads

SPLITS = ("real", "engine", "test")
Condition = Callable[[torch.Tensor, torch.Tensor, torch.Generator], tuple[torch.Tensor, torch.Tensor]]


def _offset(audio, pad_mask, generator):
    peak = zero_padding(audio, pad_mask).abs().amax(dim=1, keepdim=True)
    return zero_padding(audio + 0.2 * peak, pad_mask), pad_mask


CONDITIONS: dict[str, tuple[str, Condition]] = {
    "clean": ("the clip as stored", lambda audio, pad_mask, generator: (audio, pad_mask)),
    "trimmed": ("trimmed with no margin where frames fall 40 dB below the loudest",
                lambda audio, pad_mask, generator: trim_to_speech(
                    audio, pad_mask, probability=1.0, threshold_db=(40.0, 40.0), max_margin=0, generator=generator)),
    "trimmed-25": ("trimmed with no margin at 25 dB, into the weak onsets",
                   lambda audio, pad_mask, generator: trim_to_speech(
                       audio, pad_mask, probability=1.0, threshold_db=(25.0, 25.0), max_margin=0,
                       generator=generator)),
    "offset": ("a constant offset of a fifth of the clip's peak", _offset),
    "clipped": ("hard-clipped 12 dB below its peak",
                lambda audio, pad_mask, generator: (clip_peaks(audio, pad_mask, probability=1.0,
                                                               overdrive_db=(12.0, 12.0), generator=generator),
                                                    pad_mask)),
    "hum": ("mains hum (50 or 60 Hz and 4 harmonics) 12 dB below the speech",
            lambda audio, pad_mask, generator: (add_hum(audio, pad_mask, sample_rate=SAMPLE_RATE, probability=1.0,
                                                        snr_db=(12.0, 12.0), generator=generator), pad_mask)),
    "noise": ("white noise 10 dB below the speech",
              lambda audio, pad_mask, generator: (add_white_noise(audio, pad_mask, snr_db=10.0, generator=generator),
                                                  pad_mask)),
    "phone": ("a telephone line (300-3,400 Hz, 8 kHz, mu-law)",
              lambda audio, pad_mask, generator: (telephone_band(audio, pad_mask, sample_rate=SAMPLE_RATE,
                                                                 probability=1.0, generator=generator), pad_mask)),
}


@torch.no_grad()
def score(model: torch.nn.Module, batches, conditions: list[str], *, speech_margin: float,
          speeds: tuple[float, ...]) -> dict[str, dict[str, int]]:
    """Hits per condition, plain and averaged over ``speeds``, over ``batches`` ({audio, audio_pad_mask, label}).
    Batch ``i`` meets every condition with a generator seeded ``i``: the same draws for every model."""
    max_samples = model.input_adapter.max_samples
    hits = {name: {"clips": 0, "plain": 0, "speed_averaged": 0} for name in conditions}
    for index, batch in enumerate(batches):
        for name in conditions:
            generator = torch.Generator().manual_seed(index)
            audio, pad_mask = CONDITIONS[name][1](batch["audio"], batch["audio_pad_mask"], generator)
            audio, pad_mask = cut_to_speech(audio, pad_mask, max_samples=max_samples, speech_margin=speech_margin)
            plain, averaged = plain_and_speed_averaged_log_probs(model, audio, pad_mask, speeds=speeds,
                                                                 max_samples=max_samples)
            labels = batch["label"]
            hits[name]["clips"] += len(labels)
            hits[name]["plain"] += int((plain.argmax(dim=1).cpu() == labels).sum())
            hits[name]["speed_averaged"] += int((averaged.argmax(dim=1).cpu() == labels).sum())
    return hits


def batches_of(shards: list[str], limit: int | None, batch_size: int):
    """The first ``limit`` clips of a split (all when None), in shard order."""
    taken = 0
    for batch in make_loader(shards, batch_size=batch_size, mode="epoch", shuffle=False, num_workers=0):
        if limit is not None:
            if taken >= limit:
                return
            batch = {key: value[: limit - taken] if isinstance(value, (torch.Tensor, list)) else value
                     for key, value in batch.items()}
        taken += len(batch["label"])
        yield batch


def markdown(report: dict) -> str:
    conditions = report["conditions"]
    lines = ["# Spoken digits under recording conditions", "",
             f"- command: `{report['command']}`", f"- machine: {report['machine']}",
             f"- clips: {report['dataset']}'s evaluation splits",
             "- each cell: plain accuracy / averaged over playback speeds", "",
             "| model | split | clips | " + " | ".join(conditions) + " |",
             "| --- | --- | ---: | " + " | ".join("---:" for _ in conditions) + " |"]
    for row in report["rows"]:
        cells = [f"{100 * row[c]['plain'] / row[c]['clips']:.1f}% / "
                 f"{100 * row[c]['speed_averaged'] / row[c]['clips']:.1f}%" for c in conditions]
        lines.append(f"| {row['model']} | {row['split']} | {row[conditions[0]]['clips']} | " + " | ".join(cells) + " |")
    lines += ["", "Conditions:", ""] + [f"- {name}: {CONDITIONS[name][0]}" for name in conditions]
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.recording_conditions",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="+", type=Path, help="model folders saved by experiments.spoken_digits")
    add_eval_data_args(parser)
    parser.add_argument("--splits", nargs="+", choices=SPLITS, default=list(SPLITS))
    parser.add_argument("--conditions", nargs="+", choices=tuple(CONDITIONS), default=list(CONDITIONS))
    parser.add_argument("--limit", type=int, default=None, help="clips scored per split (default: all)")
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (default: the free cores)")
    parser.add_argument("--out", type=Path, default=None, help="also write OUT.md and OUT.json")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)
    if args.limit is not None and args.limit < 1:
        parser.error(f"--limit: expected a positive number of clips, got {args.limit}")
    if args.batch_size < 1:
        parser.error(f"--batch-size: expected a positive int, got {args.batch_size}")
    check_models(parser, args.models)
    return args


def main(argv: list[str] | None = None) -> dict:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    set_threads(args.threads)
    shards = {split: find_shards(args.data / args.dataset, args.dataset, split) for split in args.splits}
    rows = []
    for model_dir in args.models:
        model = load_model(model_dir).eval()
        margin, speeds = scoring_settings(model_dir)
        for split in args.splits:
            batches = tqdm(batches_of(shards[split], args.limit, args.batch_size),
                           desc=f"{model_dir.parent.name} {split}", unit="batch", disable=args.no_progress)
            hits = score(model, batches, args.conditions, speech_margin=margin, speeds=speeds)
            rows.append({"model": str(model_dir), "split": split, **hits})
            print(f"{model_dir} {split}: " + ", ".join(
                f"{name} {100 * h['plain'] / h['clips']:.1f}%" for name, h in hits.items()), flush=True)
    return publish({**provenance("benchmarks.recording_conditions", argv), "dataset": args.dataset,
                    "conditions": list(args.conditions), "rows": rows}, markdown, args.out)


if __name__ == "__main__":
    main()
