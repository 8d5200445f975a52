"""Spoken digits: classify spoken 0–9 with a Perceiver IO over log-mel spectrogram patches (``SpectrogramAdapter``).

The shards are built from espeak-ng speech synthesis (and Asterisk's recorded digits) under ``--data`` when absent.
Two evaluations: ``test`` holds out whole synthetic voices (speakers never heard in training), ``real`` is one human
speaker's recordings, a test of how far a model trained on synthetic speech carries to real speech. The real
recordings are 8 kHz telephone audio (resampled to 16 kHz), so the filterbank stops at ``--f-max`` (4 kHz) by
default: the model hears the same band in both. By default each token is a group of 4 frames (40 ms) across all mel
bins; ``--input patches`` cuts time × frequency tiles instead (the same adapter class, a different token shape).
Training augments each batch with a random playback speed (tempo and pitch), a random leading silence and background
noise::

    python -m experiments.spoken_digits --out runs/spoken-digits
    python -m experiments.spoken_digits --out runs/spoken-digits-tiles --input patches   # time × frequency tiles
    torchrun --nproc_per_node=2 -m experiments.spoken_digits --out runs/spoken-digits-ddp
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from torch import nn

if __package__ in (None, ""):  # run as a file: python experiments/spoken_digits.py
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from experiments.common import (add_data_args, build_parser, check_args, classifier, confusion_metrics, per_rank_seed,
                                run_summary, start_run, train_on_shards)
from experiments.datasets import ensure_shards
from perceiver import PerceiverIO
from perceiver.adapters import SpectrogramAdapter
from perceiver.data import make_loader
from perceiver.masks import pad_mask_from_lengths
from perceiver.training.distributed import all_reduce_sum
from perceiver.training.plots import confusion_matrix

NAME = "spoken_digits"
DATASET = "spoken-digits"
CLASSES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
SAMPLE_RATE = 16000
# What --input picks: "patches" cuts the log-mel spectrogram into time × frequency tiles; "time-frames" makes one
# token of each group of --patch-frames frames over all mel bins (a 1-D sequence, fewer and wider tokens).
INPUTS = ("patches", "time-frames")


def build_adapter(args) -> SpectrogramAdapter:
    patch_size = (args.patch_frames, args.n_mels if args.input == "time-frames" else args.patch_mels)
    return SpectrogramAdapter(sample_rate=SAMPLE_RATE, n_fft=400, hop_length=160, n_mels=args.n_mels,
                              f_max=args.f_max, max_duration=args.max_duration, patch_size=patch_size,
                              embed_channels=args.embed_channels, num_bands=args.num_bands)


def build_model(args) -> PerceiverIO:
    return classifier(build_adapter(args), args, num_classes=len(CLASSES), widening_factor=args.widening_factor)


def crop(audio: torch.Tensor, pad_mask: torch.Tensor, max_samples: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Keep the first ``max_samples`` samples (the adapter's longest input); padding stays trailing."""
    return audio[:, :max_samples], pad_mask[:, :max_samples]


def change_speed(audio: torch.Tensor, pad_mask: torch.Tensor, *,
                 speeds: tuple[float, float]) -> tuple[torch.Tensor, torch.Tensor]:
    """Play each waveform faster or slower by a factor drawn uniformly from ``speeds`` (linear interpolation).

    Tempo and pitch change together, as when a tape runs at another speed: a cheap stand-in for other speakers'
    vocal tract lengths and speaking rates. Returns the new waveforms and their trailing pad mask.
    """
    lengths = (audio.shape[1] - pad_mask.sum(dim=1)).tolist()
    factors = torch.empty(len(lengths)).uniform_(min(speeds), max(speeds)).tolist()
    resampled = []
    for row, length, factor in zip(audio, lengths, factors):
        new_length = max(1, round(length / factor))
        resampled.append(nn.functional.interpolate(row[None, None, :max(1, length)], size=new_length, mode="linear",
                                                   align_corners=False)[0, 0])
    new_lengths = torch.tensor([len(row) for row in resampled])
    padded = torch.zeros(len(resampled), int(new_lengths.max()))
    for i, row in enumerate(resampled):
        padded[i, :len(row)] = row
    return padded, pad_mask_from_lengths(new_lengths, padded.shape[1])


def augment(audio: torch.Tensor, pad_mask: torch.Tensor, *, max_shift: int,
            snr_db: tuple[float, float] | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Delay each waveform by up to ``max_shift`` samples of silence, then add white noise at an SNR drawn uniformly
    from ``snr_db`` (dB; None = no noise).

    The delay moves the word within the adapter's absolute time positions; the noise fills the silences too, as a
    real microphone does. Returns the new waveforms (B, T + max_shift) and their trailing pad mask.
    """
    batch, length = audio.shape
    lengths = length - pad_mask.sum(dim=1)
    shifts = torch.randint(0, max_shift + 1, (batch,))
    source = torch.arange(length + max_shift)[None, :] - shifts[:, None]  # where each output sample comes from
    inside = (source >= 0) & (source < lengths[:, None])
    shifted = audio.gather(1, source.clamp(0, length - 1)) * inside
    new_pad_mask = pad_mask_from_lengths(lengths + shifts, length + max_shift)
    if snr_db is None:
        return shifted, new_pad_mask
    power = (audio**2).sum(dim=1) / lengths.clamp(min=1)
    snr = torch.empty(batch).uniform_(min(snr_db), max(snr_db))
    noise_std = torch.sqrt(power / 10 ** (snr / 10))
    noisy = shifted + noise_std[:, None] * torch.randn_like(shifted)
    return noisy.masked_fill(new_pad_mask, 0.0), new_pad_mask


def main(argv: list[str] | None = None) -> dict:
    parser = build_parser(__doc__.splitlines()[0], name=NAME, defaults=dict(
        max_steps=1600, batch_size=64, lr=2e-3, weight_decay=0.05, num_latents=32, num_latent_channels=128,
        num_self_attention_heads=4, num_self_attention_layers=4, eval_every=800, checkpoint_every=400))
    add_data_args(parser, "spoken-digits")
    parser.add_argument("--input", choices=INPUTS, default="time-frames",
                        help="input adapter: time × frequency patches, or one token per group of full-band frames")
    parser.add_argument("--n-mels", type=int, default=32, help="mel bins")
    parser.add_argument("--f-max", type=float, default=4000.0, help="highest filterbank frequency in Hz")
    parser.add_argument("--max-duration", type=float, default=1.0, help="longer waveforms are cut, in seconds")
    parser.add_argument("--patch-frames", type=int, default=4, help="frames (10 ms each) per patch")
    parser.add_argument("--patch-mels", type=int, default=8, help="mel bins per patch (divides --n-mels)")
    parser.add_argument("--embed-channels", type=int, default=128, help="width of the linear patch embedding")
    parser.add_argument("--num-bands", type=int, default=8, help="Fourier frequency bands per patch-grid axis")
    parser.add_argument("--widening-factor", type=int, default=2, help="MLP width / attention width")
    parser.add_argument("--max-shift", type=float, default=0.2, help="augmentation: longest leading silence, seconds")
    parser.add_argument("--snr-db", type=float, nargs=2, default=(10.0, 40.0), metavar=("LOW", "HIGH"),
                        help="augmentation: range of the added noise's signal-to-noise ratio in dB")
    parser.add_argument("--no-noise", action="store_true", help="augmentation: add no noise")
    parser.add_argument("--speed", type=float, nargs=2, default=(0.85, 1.15), metavar=("LOW", "HIGH"),
                        help="augmentation: range of the playback speed factor (1 1 = off)")
    parser.add_argument("--label-smoothing", type=float, default=0.1)
    args = parser.parse_args(argv)
    check_args(parser, args)
    if args.input == "patches" and args.n_mels % args.patch_mels:
        parser.error(f"--patch-mels: expected a divisor of --n-mels={args.n_mels}, got {args.patch_mels}")
    if not 0 < args.f_max <= SAMPLE_RATE / 2:
        parser.error(f"--f-max: expected a frequency in (0, {SAMPLE_RATE // 2}] Hz, got {args.f_max}")

    run = start_run(args, name=NAME)
    shards = ensure_shards(DATASET, args.data, ("train", "test", "real"), limit=args.limit, seed=args.seed)
    model = build_model(args)
    per_rank_seed(args.seed, run.context.rank)
    device = run.context.device
    max_samples = round(args.max_duration * SAMPLE_RATE)
    max_shift = round(args.max_shift * SAMPLE_RATE)

    def loss_fn(model: nn.Module, batch: dict) -> tuple[torch.Tensor, dict]:
        audio, pad_mask = batch["audio"].cpu(), batch["audio_pad_mask"].cpu()
        if tuple(args.speed) != (1.0, 1.0):
            audio, pad_mask = change_speed(audio, pad_mask, speeds=args.speed)
        audio, pad_mask = augment(audio, pad_mask, max_shift=max_shift, snr_db=None if args.no_noise else args.snr_db)
        audio, pad_mask = crop(audio, pad_mask, max_samples)
        logits = model(audio.to(device), pad_mask.to(device)).float()
        labels = batch["label"].to(device)
        loss = nn.functional.cross_entropy(logits, labels, label_smoothing=args.label_smoothing)
        return loss, {"accuracy": (logits.argmax(dim=1) == labels).float().mean()}

    def split_counts(model: nn.Module, split: str) -> torch.Tensor:
        counts = torch.zeros(len(CLASSES), len(CLASSES), dtype=torch.int64, device=device)
        for batch in make_loader(shards[split], batch_size=100, mode="epoch", shuffle=False,
                                 num_workers=args.num_workers):
            audio, pad_mask = crop(batch["audio"], batch["audio_pad_mask"], max_samples)
            logits = model(audio.to(device), pad_mask.to(device))
            counts += confusion_matrix(logits.argmax(dim=1), batch["label"].to(device), num_classes=len(CLASSES))
        return all_reduce_sum(counts)

    @torch.no_grad()
    def evaluate(model: nn.Module) -> dict:
        metrics = {}
        for split, prefix in (("test", ""), ("real", "real_")):
            metrics.update(confusion_metrics(split_counts(model, split), list(CLASSES), figure=run.tracker.active,
                                             prefix=prefix))
        return metrics

    result = train_on_shards(model, args, run, shards["train"], loss_fn=loss_fn, evaluate=evaluate)
    if run.context.is_main:
        model.save_pretrained(run.out / "model")
    return run.finish({
        "test_accuracy": result.eval_metrics.get("accuracy", float("nan")),
        "test_samples": int(result.eval_metrics.get("samples", 0)),
        "real_accuracy": result.eval_metrics.get("real_accuracy", float("nan")),
        "real_samples": int(result.eval_metrics.get("real_samples", 0)),
        **run_summary(result, model, run),
    })


if __name__ == "__main__":
    main()
