"""Training-time augmentations of batches, with their pad masks kept right.

Images (B, C, H, W): ``shift_and_flip``. Waveforms (B, T) with a trailing pad mask (B, T), True = padding:
``change_speed``, ``delay``, ``add_noise``. Each draws from torch's global generator unless given a ``generator``,
so a seeded run augments the same way every time.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from perceiver.adapters.checks import check_tensor
from perceiver.masks import check_pad_mask, pad_mask_from_lengths


def shift_and_flip(images: Tensor, *, max_shift: int, flip: bool = True,
                   generator: torch.Generator | None = None) -> Tensor:
    """Shift each image by up to ``max_shift`` pixels along each axis (zero fill) and, with ``flip``, mirror half of
    them left to right: the random crop of a ``max_shift``-padded image, as in the CIFAR and Fashion-MNIST recipes."""
    check_tensor(images, "images", kind="float", rank=4, layout="(B, C, H, W)")
    if max_shift < 0:
        raise ValueError(f"max_shift: expected an int >= 0, got {max_shift}")
    batch, _, height, width = images.shape
    padded = nn.functional.pad(images, (max_shift,) * 4)
    shifts = torch.randint(0, 2 * max_shift + 1, (batch, 2), generator=generator)
    rows = (shifts[:, 0, None] + torch.arange(height)).to(images.device)
    cols = (shifts[:, 1, None] + torch.arange(width)).to(images.device)
    index = torch.arange(batch, device=images.device)[:, None, None]
    shifted = padded[index, :, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)
    if not flip:
        return shifted
    flipped = (torch.rand(batch, generator=generator) < 0.5).to(images.device)
    return torch.where(flipped[:, None, None, None], shifted.flip(-1), shifted)


def _check_waveforms(audio: Tensor, pad_mask: Tensor) -> Tensor:
    """Check waveforms and their trailing pad mask; return the real lengths (B,)."""
    check_tensor(audio, "audio", kind="float", rank=2, layout="(B, T)")
    check_pad_mask(pad_mask, audio.shape[0], audio.shape[1])
    lengths = audio.shape[1] - pad_mask.sum(dim=1)
    if not torch.equal(pad_mask, pad_mask_from_lengths(lengths, audio.shape[1])):
        raise ValueError("pad_mask: expected trailing padding (each row False then True), got padding elsewhere")
    return lengths


def change_speed(audio: Tensor, pad_mask: Tensor, *, speeds: tuple[float, float],
                 generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    """Play each waveform faster or slower by a factor drawn uniformly from ``speeds`` (linear interpolation).

    Tempo, pitch and formants change together, as when a tape runs at another speed: a cheap stand-in for other
    speakers' vocal tract lengths and speaking rates. Returns the new waveforms and their trailing pad mask.
    """
    lengths = _check_waveforms(audio, pad_mask).tolist()
    if not 0 < min(speeds) <= max(speeds):
        raise ValueError(f"speeds: expected two positive factors (low, high), got {tuple(speeds)}")
    factors = (torch.rand(len(lengths), generator=generator) * (max(speeds) - min(speeds)) + min(speeds)).tolist()
    resampled = []
    for row, length, factor in zip(audio, lengths, factors):
        new_length = max(1, round(length / factor))
        resampled.append(nn.functional.interpolate(row[None, None, :max(1, length)], size=new_length, mode="linear",
                                                   align_corners=False)[0, 0])
    new_lengths = torch.tensor([len(row) for row in resampled], device=audio.device)
    padded = audio.new_zeros(len(resampled), int(new_lengths.max()))
    for i, row in enumerate(resampled):
        padded[i, :len(row)] = row
    return padded, pad_mask_from_lengths(new_lengths, padded.shape[1])


def delay(audio: Tensor, pad_mask: Tensor, *, max_shift: int,
          generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    """Put up to ``max_shift`` samples of silence in front of each waveform (the word moves within the adapter's
    absolute time positions). Returns waveforms (B, T + max_shift) and their trailing pad mask."""
    lengths = _check_waveforms(audio, pad_mask)
    if max_shift < 0:
        raise ValueError(f"max_shift: expected an int >= 0, got {max_shift}")
    batch, length = audio.shape
    shifts = torch.randint(0, max_shift + 1, (batch,), generator=generator).to(audio.device)
    source = torch.arange(length + max_shift, device=audio.device)[None, :] - shifts[:, None]
    inside = (source >= 0) & (source < lengths[:, None])
    shifted = torch.where(inside, audio.gather(1, source.clamp(0, length - 1)), torch.zeros((), dtype=audio.dtype))
    return shifted, pad_mask_from_lengths(lengths + shifts, length + max_shift)


def add_noise(audio: Tensor, pad_mask: Tensor, *, snr_db: tuple[float, float],
              generator: torch.Generator | None = None) -> Tensor:
    """White noise at a signal-to-noise ratio drawn uniformly from ``snr_db`` (dB) per waveform, over its real
    samples only (the silences too, as a real microphone hears them); padding stays 0."""
    lengths = _check_waveforms(audio, pad_mask)
    real = torch.where(pad_mask, torch.zeros((), dtype=audio.dtype), audio)
    power = real.pow(2).sum(dim=1) / lengths.clamp(min=1)
    low, high = min(snr_db), max(snr_db)
    snr = torch.rand(audio.shape[0], generator=generator).to(audio) * (high - low) + low
    noise = torch.randn(audio.shape, generator=generator).to(audio)
    noisy = real + torch.sqrt(power / 10 ** (snr / 10))[:, None] * noise
    return torch.where(pad_mask, torch.zeros((), dtype=audio.dtype), noisy)
