"""What the audio-visual digit experiments share: the two input adapters, the degradations, the model inputs.

A sample of ``av-digits`` is an MNIST image (1, 28, 28) in [0, 1] and a spoken digit of the same class (16 kHz
waveform). The image becomes 4 × 4 pixel patches (``PatchAdapter``); the audio becomes one token per 40 ms of
log-mel frames over all mel bins (``SpectrogramAdapter``, as in ``experiments.spoken_digits``).

Degradations (``Degradation``) make each modality hard on its own, so that fusing them can matter:

- image: a square of ``occlusion`` × ``occlusion`` pixels at a random place is replaced by uniform noise, then
  Gaussian noise of standard deviation ``image_noise`` is added to every pixel and the result is clipped to [0, 1];
- audio: white noise at a signal-to-noise ratio of ``audio_snr_db`` (measured over the real samples) is added to the
  waveform, silences included; padding stays zero.

Training draws fresh degradations every step; evaluation draws them from a generator seeded by ``--seed`` with the
test split read in a fixed order, so every model of a comparison sees the very same degraded test set.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass

import torch

from perceiver.adapters import PatchAdapter, SpectrogramAdapter

DATASET = "av-digits"
MODALITIES = ("image", "audio")
CLASSES = tuple(str(digit) for digit in range(10))
SAMPLE_RATE = 16000
IMAGE_SIZE = 28
IMAGE_MEAN, IMAGE_STD = 0.1307, 0.3081  # MNIST's pixel statistics
EVAL_SEED_OFFSET = 7919  # the evaluation's degradations come from their own stream, never the training one's


def add_adapter_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("input adapters")
    group.add_argument("--patch-size", type=int, default=4, help="image: side of the square pixel patches (divides 28)")
    group.add_argument("--embed-channels", type=int, default=64, help="width of the linear patch embeddings")
    group.add_argument("--num-bands", type=int, default=6, help="Fourier frequency bands per axis")
    group.add_argument("--n-mels", type=int, default=32, help="audio: mel bins")
    group.add_argument("--f-max", type=float, default=4000.0, help="audio: highest filterbank frequency in Hz")
    group.add_argument("--patch-frames", type=int, default=4, help="audio: 10 ms frames per token")


def add_degradation_args(parser: argparse.ArgumentParser, *, image_noise: float, occlusion: int,
                         audio_snr_db: float | None) -> None:
    group = parser.add_argument_group("degradation (see experiments/av_digits.py)")
    group.add_argument("--image-noise", type=float, default=image_noise, help="std of the Gaussian pixel noise")
    group.add_argument("--occlusion", type=int, default=occlusion, help="side in pixels of the noise square (0 = none)")
    group.add_argument("--audio-snr-db", type=float, default=audio_snr_db,
                       help="signal-to-noise ratio of the added white noise in dB (omit for clean audio)")


def check_adapter_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if IMAGE_SIZE % args.patch_size:
        parser.error(f"--patch-size: expected a divisor of {IMAGE_SIZE}, got {args.patch_size}")
    for flag in ("embed_channels", "n_mels", "patch_frames"):
        if getattr(args, flag) < 1:
            parser.error(f"--{flag.replace('_', '-')}: expected a positive int, got {getattr(args, flag)}")
    if getattr(args, "image_noise", 0.0) < 0:
        parser.error(f"--image-noise: expected a standard deviation >= 0, got {args.image_noise}")
    if not 0 <= getattr(args, "occlusion", 0) <= IMAGE_SIZE:
        parser.error(f"--occlusion: expected a side in [0, {IMAGE_SIZE}] pixels, got {args.occlusion}")


def image_adapter(args: argparse.Namespace) -> PatchAdapter:
    return PatchAdapter(in_channels=1, max_size=(IMAGE_SIZE, IMAGE_SIZE), patch_size=args.patch_size,
                        embed_channels=args.embed_channels, num_bands=args.num_bands)


def audio_adapter(args: argparse.Namespace) -> SpectrogramAdapter:
    return SpectrogramAdapter(sample_rate=SAMPLE_RATE, n_fft=400, hop_length=160, n_mels=args.n_mels,
                              f_max=args.f_max, max_duration=1.0, patch_size=(args.patch_frames, args.n_mels),
                              embed_channels=args.embed_channels, num_bands=args.num_bands)


@dataclass(frozen=True)
class Degradation:
    image_noise: float = 0.0
    occlusion: int = 0
    audio_snr_db: float | None = None

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> "Degradation":
        return cls(image_noise=args.image_noise, occlusion=args.occlusion, audio_snr_db=args.audio_snr_db)

    def describe(self) -> str:
        audio = "clean" if self.audio_snr_db is None else f"white noise at {self.audio_snr_db:g} dB SNR"
        return (f"image: {self.occlusion}×{self.occlusion} noise square + Gaussian noise σ={self.image_noise:g}; "
                f"audio: {audio}")


def degrade_images(images: torch.Tensor, *, noise_std: float, occlusion: int,
                   generator: torch.Generator | None = None) -> torch.Tensor:
    """Images (B, C, H, W) in [0, 1] with a uniform-noise square of side ``occlusion`` and Gaussian pixel noise."""
    batch, _, height, width = images.shape
    out = images.clone()
    if occlusion:
        tops = torch.randint(0, height - occlusion + 1, (batch,), generator=generator)
        lefts = torch.randint(0, width - occlusion + 1, (batch,), generator=generator)
        rows = torch.arange(height)[None, :, None]
        cols = torch.arange(width)[None, None, :]
        square = ((rows >= tops[:, None, None]) & (rows < tops[:, None, None] + occlusion)
                  & (cols >= lefts[:, None, None]) & (cols < lefts[:, None, None] + occlusion))
        fill = torch.rand(images.shape, generator=generator)
        out = torch.where(square[:, None].to(images.device), fill.to(images.device), out)
    if noise_std:
        out = out + noise_std * torch.randn(images.shape, generator=generator).to(images.device)
    return out.clamp(0.0, 1.0)


def degrade_audio(audio: torch.Tensor, pad_mask: torch.Tensor, *, snr_db: float | None,
                  generator: torch.Generator | None = None) -> torch.Tensor:
    """Waveforms (B, T) plus white noise at ``snr_db`` relative to each one's power over its real samples."""
    if snr_db is None:
        return audio
    real = (~pad_mask).to(audio.dtype)
    power = (audio**2 * real).sum(dim=1) / real.sum(dim=1).clamp(min=1)
    noise_std = torch.sqrt(power / 10 ** (snr_db / 10))
    noise = torch.randn(audio.shape, generator=generator).to(audio.device)
    return (audio + noise_std[:, None] * noise) * real


def crop_audio(audio: torch.Tensor, pad_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Keep the first second (the audio adapter's longest input); padding stays trailing."""
    return audio[:, :SAMPLE_RATE], pad_mask[:, :SAMPLE_RATE]


def model_inputs(batch: dict, modalities, device: torch.device, degradation: Degradation = Degradation(),
                 generator: torch.Generator | None = None) -> tuple[dict, dict]:
    """``(x, pad_masks)`` for the models: ``x = {name: input}`` for ``modalities``, degraded, on ``device``.

    Images are standardised after degrading (the noise is added in pixel space); audio is cropped to one second.
    Both modalities are always degraded in the same order, so the draws for one do not depend on which are asked for.
    """
    images = degrade_images(batch["image"], noise_std=degradation.image_noise, occlusion=degradation.occlusion,
                            generator=generator)
    audio, audio_pad = crop_audio(batch["audio"], batch["audio_pad_mask"])
    audio = degrade_audio(audio, audio_pad, snr_db=degradation.audio_snr_db, generator=generator)
    x, pad_masks = {}, {}
    if "image" in modalities:
        x["image"] = ((images - IMAGE_MEAN) / IMAGE_STD).to(device)
    if "audio" in modalities:
        x["audio"] = audio.to(device)
        pad_masks["audio"] = audio_pad.to(device)
    return x, pad_masks


def eval_generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed + EVAL_SEED_OFFSET)
