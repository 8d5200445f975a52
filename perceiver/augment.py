"""Training-time augmentations of batches, with their pad masks kept right.

Images (B, C, H, W): ``shift_and_flip``, ``occlude_and_add_noise``. Waveforms (B, T) with a trailing pad mask
(B, T), True = padding: ``change_speed``, ``delay``, ``add_noise`` (white, pink or brown), ``add_white_noise`` (at one
fixed SNR), ``reverberate`` (synthetic rooms),
``telephone_band`` (a phone line's band and codec), ``gain_and_tilt`` (level and microphone colour),
``trim_to_speech`` (a tight trim around the word), ``add_hum`` (mains hum), ``clip_peaks`` (an input driven into
clipping). Each draws from torch's global generator unless given a ``generator``, so a seeded run augments the same
way every time; each leaves padding at 0 and keeps it trailing. ``remove_dc``, ``crop`` and ``crop_to_speech``
prepare waveforms for an adapter (a constant offset removed, cut to its longest input), in training and evaluation
alike. The spectrogram-level augmentations (SpecAugment masks, vocal tract length
perturbation) are options of ``perceiver.adapters.LogMelSpectrogram``.

The filters come from ``scipy.signal`` (the ``data`` extra), imported where they are used.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor, nn

from perceiver.adapters.checks import check_tensor
from perceiver.masks import check_pad_mask, pad_mask_from_lengths, zero_padding


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


def occlude_and_add_noise(images: Tensor, *, noise_std: float, occlusion: int,
                          generator: torch.Generator | None = None) -> Tensor:
    """Images (B, C, H, W) in [0, 1]: a square of side ``occlusion`` pixels at a random place is replaced by uniform
    noise, then Gaussian noise of std ``noise_std`` is added to every pixel; the result is clipped to [0, 1]."""
    check_tensor(images, "images", kind="float", rank=4, layout="(B, C, H, W)")
    batch, _, height, width = images.shape
    if not 0 <= occlusion <= min(height, width) or noise_std < 0:
        raise ValueError(f"occlusion, noise_std: expected a side in [0, {min(height, width)}] and a std >= 0, got "
                         f"{occlusion}, {noise_std}")
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


def _check_waveforms(audio: Tensor, pad_mask: Tensor) -> Tensor:
    """Check waveforms and their trailing pad mask; return the real lengths (B,)."""
    check_tensor(audio, "audio", kind="float", rank=2, layout="(B, T)")
    check_pad_mask(pad_mask, audio.shape[0], audio.shape[1])
    lengths = audio.shape[1] - pad_mask.sum(dim=1)
    if not torch.equal(pad_mask, pad_mask_from_lengths(lengths, audio.shape[1])):
        raise ValueError("pad_mask: expected trailing padding (each row False then True), got padding elsewhere")
    return lengths


def _stack_rows(rows: list[Tensor], like: Tensor) -> tuple[Tensor, Tensor]:
    """Waveforms of new lengths (each 1-D) as one batch (B, T') of ``like``'s dtype and device, zero-padded at the
    end, and its trailing pad mask."""
    lengths = torch.tensor([len(row) for row in rows], device=like.device)
    out = like.new_zeros(len(rows), max(1, int(lengths.max())))
    for i, row in enumerate(rows):
        out[i, :len(row)] = row
    return out, pad_mask_from_lengths(lengths, out.shape[1])


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
    return _stack_rows(resampled, audio)


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


NOISE_COLORS = {"white": 0.0, "pink": 1.0, "brown": 2.0}  # the exponent b of a 1 / f**b power spectrum


def _uniform(batch: int, bounds, name: str, generator) -> Tensor:
    """``batch`` draws from U(low, high), float64 on the CPU; ``bounds`` is (low, high)."""
    try:
        low, high = (float(bound) for bound in bounds)
    except (TypeError, ValueError):
        raise TypeError(f"{name}: expected two numbers (low, high), got {bounds!r}") from None
    if not low <= high:
        raise ValueError(f"{name}: expected low <= high, got ({low}, {high})")
    return torch.rand(batch, generator=generator, dtype=torch.float64) * (high - low) + low


def _chosen(batch: int, probability: float, generator) -> Tensor:
    if not 0.0 <= probability <= 1.0:
        raise ValueError(f"probability: expected a number in [0, 1], got {probability}")
    return torch.rand(batch, generator=generator) < probability


def colored_noise(batch: int, length: int, exponents: Tensor, *, generator: torch.Generator | None = None) -> Tensor:
    """Gaussian noise (batch, length), float64, whose power spectrum falls as 1 / f**exponent per row (0 white,
    1 pink, 2 brown), each row scaled to unit mean power."""
    white = torch.randn(batch, length, generator=generator, dtype=torch.float64)
    spectrum = torch.fft.rfft(white, dim=1)
    freqs = torch.fft.rfftfreq(length, dtype=torch.float64)
    freqs[0] = freqs[1] if length > 1 else 1.0  # no infinite gain at DC
    shaped = torch.fft.irfft(spectrum * freqs[None, :] ** (-exponents[:, None] / 2), n=length, dim=1)
    return shaped / shaped.pow(2).mean(dim=1, keepdim=True).sqrt().clamp(min=1e-12)


def _scale_to_snr(real: Tensor, interference: Tensor, pad_mask: Tensor, lengths: Tensor, snr: Tensor) -> Tensor:
    """Per waveform (B,), float64 on the CPU: the factor that puts ``interference`` (B, T), float64 on the CPU,
    ``snr`` dB (B,) below the power of ``real`` (the waveforms, padding 0), both powers taken over each waveform's
    real samples only, so that the SNR holds whatever the padding."""
    count = lengths.cpu().clamp(min=1)
    power = real.double().pow(2).sum(dim=1).cpu() / count
    inside = torch.where(pad_mask.cpu(), torch.zeros((), dtype=torch.float64), interference)
    return torch.sqrt(power / 10 ** (snr / 10) / (inside.pow(2).sum(dim=1) / count).clamp(min=1e-12))


def add_noise(audio: Tensor, pad_mask: Tensor, *, snr_db: tuple[float, float], colors: tuple[str, ...] = ("white",),
              generator: torch.Generator | None = None) -> Tensor:
    """Noise of a colour drawn from ``colors`` (``"white"``, ``"pink"``, ``"brown"``) at a signal-to-noise ratio
    drawn uniformly from ``snr_db`` (dB) per waveform, over its real samples only (the silences too, as a real
    microphone hears them); padding stays 0."""
    lengths = _check_waveforms(audio, pad_mask)
    unknown = [color for color in colors if color not in NOISE_COLORS]
    if not colors or unknown:
        raise ValueError(f"colors: expected a non-empty subset of {tuple(NOISE_COLORS)}, got {tuple(colors)}")
    batch, length = audio.shape
    real = zero_padding(audio, pad_mask)
    snr = _uniform(batch, snr_db, "snr_db", generator)
    picks = torch.randint(0, len(colors), (batch,), generator=generator)
    exponents = torch.tensor([NOISE_COLORS[colors[int(i)]] for i in picks], dtype=torch.float64)
    noise = torch.randn(batch, length, generator=generator, dtype=torch.float64) if set(colors) == {"white"} else \
        colored_noise(batch, length, exponents, generator=generator)
    scale = _scale_to_snr(real, noise, pad_mask, lengths, snr)
    return zero_padding(real + (scale[:, None] * noise).to(audio), pad_mask)


def add_white_noise(audio: Tensor, pad_mask: Tensor, *, snr_db: float | None,
                    generator: torch.Generator | None = None) -> Tensor:
    """Waveforms (B, T) plus white Gaussian noise whose std is set from ``snr_db`` and each waveform's power over its
    real samples (the silences get noise too); padding stays 0, wherever it lies. ``None``: ``audio`` unchanged.

    Unlike ``add_noise`` (an SNR drawn from a range, the noise rescaled to its exact power), the SNR is one fixed
    value and the noise is drawn at the expected power: the fixed degradation of an evaluation.
    """
    if snr_db is None:
        return audio
    check_tensor(audio, "audio", kind="float", rank=2, layout="(B, T)")
    check_pad_mask(pad_mask, audio.shape[0], audio.shape[1])
    real = (~pad_mask).to(audio.dtype)
    power = (audio**2 * real).sum(dim=1) / real.sum(dim=1).clamp(min=1)
    noise_std = torch.sqrt(power / 10 ** (snr_db / 10))
    noise = torch.randn(audio.shape, generator=generator).to(audio.device)
    return (audio + noise_std[:, None] * noise) * real


def room_impulse_responses(rt60: Tensor, *, sample_rate: int, generator: torch.Generator | None = None) -> Tensor:
    """Synthetic room impulse responses (B, L), float64, unit energy: Gaussian noise under an exponential decay that
    falls by 60 dB in ``rt60`` seconds (B,), the late reverberation of a diffuse room. L covers the longest."""
    length = max(1, math.ceil(float(rt60.max()) * sample_rate))
    t = torch.arange(length, dtype=torch.float64) / sample_rate
    decay = torch.exp(-3.0 * math.log(10.0) * t[None, :] / rt60[:, None])  # amplitude: -60 dB at t = rt60
    responses = torch.randn(len(rt60), length, generator=generator, dtype=torch.float64) * decay
    return responses / responses.pow(2).sum(dim=1, keepdim=True).sqrt()


def reverberate(audio: Tensor, pad_mask: Tensor, *, sample_rate: int, rt60: tuple[float, float] = (0.1, 0.7),
                wet: tuple[float, float] = (0.1, 0.6), probability: float = 0.5,
                generator: torch.Generator | None = None) -> Tensor:
    """Play a random ``probability`` of the waveforms in a synthetic room: each is convolved with its own room
    impulse response (``room_impulse_responses``, RT60 drawn from ``rt60`` seconds) and mixed with the dry signal,
    ``(1 - w) dry + w reverberant`` with ``w`` drawn from ``wet``, at the same RMS. The reverberation of a waveform's
    real samples stays within them (its lengths and pad mask do not change); padding stays 0."""
    from scipy.signal import fftconvolve

    _check_waveforms(audio, pad_mask)
    batch = audio.shape[0]
    if not min(rt60) > 0:
        raise ValueError(f"rt60: expected positive seconds (low, high), got {tuple(rt60)}")
    times, mix = _uniform(batch, rt60, "rt60", generator), _uniform(batch, wet, "wet", generator)
    if not 0.0 <= min(wet) <= max(wet) <= 1.0:
        raise ValueError(f"wet: expected fractions in [0, 1], got {tuple(wet)}")
    chosen = _chosen(batch, probability, generator)
    responses = room_impulse_responses(times, sample_rate=sample_rate, generator=generator)
    if not chosen.any():
        return zero_padding(audio, pad_mask)
    dry = zero_padding(audio, pad_mask).double().cpu().numpy()
    wet_signal = torch.from_numpy(fftconvolve(dry, responses.numpy(), axes=1)[:, : audio.shape[1]])
    dry = torch.from_numpy(dry)
    # The tail that rings past a waveform's end is cut there, before the level is matched.
    wet_signal = torch.where(pad_mask.cpu(), torch.zeros((), dtype=torch.float64), wet_signal)
    mixed = (1 - mix[:, None]) * dry + mix[:, None] * wet_signal
    rms = lambda x: x.pow(2).sum(dim=1, keepdim=True).sqrt()  # noqa: E731
    mixed = mixed * rms(dry) / rms(mixed).clamp(min=1e-12)
    out = torch.where(chosen[:, None], mixed, dry).to(audio)
    return zero_padding(out, pad_mask)


def mu_law(x: Tensor, bits: int = 8) -> Tensor:
    """x in [-1, 1] through G.711-style mu-law companding and ``bits``-bit quantisation, and back."""
    mu = 2**bits - 1
    compressed = torch.sign(x) * torch.log1p(mu * x.abs().clamp(max=1.0)) / math.log1p(mu)
    quantised = torch.round((compressed + 1) / 2 * mu) / mu * 2 - 1
    return torch.sign(quantised) * ((1 + mu) ** quantised.abs() - 1) / mu


def telephone_band(audio: Tensor, pad_mask: Tensor, *, sample_rate: int, probability: float = 0.5,
                   band: tuple[float, float] = (300.0, 3400.0), generator: torch.Generator | None = None) -> Tensor:
    """Send a random ``probability`` of the waveforms down a telephone line: a 4th-order Butterworth band-pass over
    ``band`` Hz, down to 8 kHz and back (an anti-aliasing polyphase resampler; skipped when ``sample_rate`` is
    8 kHz already) and 8-bit mu-law companding (G.711), at the waveform's own peak level. Lengths and the pad mask do
    not change; padding stays 0."""
    from scipy.signal import butter, resample_poly, sosfilt

    _check_waveforms(audio, pad_mask)
    low, high = band
    if not 0 < low < high < sample_rate / 2:
        raise ValueError(f"band: expected 0 < low < high < {sample_rate / 2} Hz, got {tuple(band)}")
    chosen = _chosen(audio.shape[0], probability, generator)
    if not chosen.any():
        return zero_padding(audio, pad_mask)
    rows = chosen.nonzero()[:, 0]
    signal = zero_padding(audio, pad_mask).double().cpu().numpy()[rows.numpy()]
    filtered = sosfilt(butter(4, (low, high), btype="bandpass", fs=sample_rate, output="sos"), signal, axis=1)
    common = math.gcd(8000, sample_rate)
    up, down = 8000 // common, sample_rate // common
    line = torch.from_numpy(resample_poly(filtered, up, down, axis=1) if down != up else filtered)
    # Companded at 8 kHz, as on the line, so that its quantisation noise stays within the band.
    peak = line.abs().amax(dim=1, keepdim=True).clamp(min=1e-12)
    line = (mu_law(line / peak) * peak).numpy()
    if down != up:
        line = resample_poly(line, down, up, axis=1)[:, : signal.shape[1]]
        line = np.pad(line, ((0, 0), (0, signal.shape[1] - line.shape[1])))
    out = zero_padding(audio, pad_mask).clone()
    out[rows.to(audio.device)] = torch.from_numpy(line).to(audio)
    return zero_padding(out, pad_mask)


def gain_and_tilt(audio: Tensor, pad_mask: Tensor, *, gain_db: tuple[float, float] = (-20.0, 6.0),
                  tilt: tuple[float, float] = (-0.6, 0.6), generator: torch.Generator | None = None) -> Tensor:
    """A random level (``gain_db``, dB) and spectral tilt per waveform: the first-order filter
    ``y[t] = x[t] - a x[t - 1]`` with ``a`` drawn from ``tilt`` (a > 0 brightens like a pre-emphasis or a thin
    microphone, a < 0 darkens), scaled back to the waveform's RMS before the gain. Padding stays 0."""
    from scipy.signal import lfilter

    _check_waveforms(audio, pad_mask)
    batch = audio.shape[0]
    gains, slopes = _uniform(batch, gain_db, "gain_db", generator), _uniform(batch, tilt, "tilt", generator)
    if not -1.0 < min(tilt) <= max(tilt) < 1.0:
        raise ValueError(f"tilt: expected coefficients in (-1, 1), got {tuple(tilt)}")
    signal = zero_padding(audio, pad_mask).double().cpu().numpy()
    tilted = torch.from_numpy(np.stack([lfilter([1.0, -float(a)], [1.0], row) for a, row in zip(slopes, signal)]))
    tilted = torch.where(pad_mask.cpu(), torch.zeros((), dtype=torch.float64), tilted)  # before the level match
    rms = lambda x: x.pow(2).sum(dim=1, keepdim=True).sqrt()  # noqa: E731
    scale = rms(torch.from_numpy(signal)) / rms(tilted).clamp(min=1e-12) * 10 ** (gains[:, None] / 20)
    return zero_padding((tilted * scale).to(audio), pad_mask)


def crop(audio: Tensor, pad_mask: Tensor, max_samples: int) -> tuple[Tensor, Tensor]:
    """Keep the first ``max_samples`` samples (an adapter's longest input); padding stays trailing."""
    _check_waveforms(audio, pad_mask)
    if max_samples < 1:
        raise ValueError(f"max_samples: expected a positive int, got {max_samples}")
    return audio[:, :max_samples], pad_mask[:, :max_samples]


def crop_to_speech(audio: Tensor, pad_mask: Tensor, *, max_samples: int, frame: int = 160,
                   threshold_db: float = 40.0, margin: int = 10) -> tuple[Tensor, Tensor]:
    """Cut each waveform to where it speaks, at most ``max_samples`` long, left-aligned with trailing padding.

    Frames of ``frame`` samples within ``threshold_db`` of the waveform's loudest frame count as speech; the cut
    runs from ``margin`` frames before the first to ``margin`` frames after the last. Where that is longer than
    ``max_samples``, the ``max_samples`` window of most energy is kept. So a tightly trimmed clip, one with long
    silences around the word and one at any level reach the model alike; a noisy clip whose noise lies within
    ``threshold_db`` of its speech is cut only to the loudest window. Deterministic: for training and evaluation.
    The default margin of ten 10-ms frames keeps the weak onsets that lie up to 55 dB below a word's loudest frame
    (the f of "four", the th of "three"): with two, a spoken-digit model heard "four" as "one" (docs/exps.md).
    Returns waveforms (B, T') with T' <= max_samples and their trailing pad mask.
    """
    lengths = _check_waveforms(audio, pad_mask).tolist()
    if max_samples < 1 or frame < 1 or margin < 0:
        raise ValueError(f"max_samples, frame, margin: expected positive ints (margin >= 0), got {max_samples}, "
                         f"{frame}, {margin}")
    cuts = []
    for row, length in zip(audio, lengths):
        real = row[:length].double()
        frames = max(1, math.ceil(length / frame))
        energy = nn.functional.pad(real.pow(2), (0, frames * frame - length)).reshape(frames, frame).sum(dim=1)
        loud = (energy >= energy.max() * 10 ** (-threshold_db / 10)).nonzero()[:, 0]
        start = max(0, (int(loud[0]) - margin) * frame) if length else 0
        end = min(length, (int(loud[-1]) + 1 + margin) * frame) if length else 0
        if end - start > max_samples:
            sums = torch.cat([real.new_zeros(1), real.pow(2).cumsum(dim=0)])
            window = sums[start + max_samples: end + 1] - sums[start: end - max_samples + 1]
            start += int(window.argmax())
            end = start + max_samples
        cuts.append(row[start:end])
    return _stack_rows(cuts, audio)


def remove_dc(audio: Tensor, pad_mask: Tensor) -> Tensor:
    """Each waveform less its mean over its real samples: a microphone's or sound card's constant offset, which
    would otherwise make every frame, silence too, look loud to ``crop_to_speech`` and fill the lowest mel band.
    Deterministic: for training and evaluation alike. Padding stays 0."""
    lengths = _check_waveforms(audio, pad_mask)
    real = zero_padding(audio, pad_mask)
    mean = real.double().sum(dim=1, keepdim=True) / lengths[:, None].clamp(min=1)
    return zero_padding(real - mean.to(audio), pad_mask)


def trim_to_speech(audio: Tensor, pad_mask: Tensor, *, probability: float = 0.5,
                   threshold_db: tuple[float, float] = (20.0, 40.0), max_margin: int = 10, frame: int = 160,
                   generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    """Trim a random ``probability`` of the waveforms as a person or a tool trims a recording, tight around the
    word: ``crop_to_speech`` with a threshold drawn from ``threshold_db`` (dB below the loudest frame; 20 cuts into
    weak onsets) and a margin of 0 to ``max_margin`` frames of ``frame`` samples. Recordings collected by others
    often come trimmed that way, with none of the silence that ``crop_to_speech``'s own margin keeps around a
    synthetic word. Returns waveforms no longer than before and their trailing pad mask."""
    lengths = _check_waveforms(audio, pad_mask).tolist()
    if max_margin < 0:
        raise ValueError(f"max_margin: expected an int >= 0, got {max_margin}")
    batch = audio.shape[0]
    thresholds = _uniform(batch, threshold_db, "threshold_db", generator)
    margins = torch.randint(0, max_margin + 1, (batch,), generator=generator)
    chosen = _chosen(batch, probability, generator)
    rows = []
    for row, length, cut, threshold, margin in zip(audio, lengths, chosen, thresholds, margins):
        row = row[:length]
        if cut and length:
            row = crop_to_speech(row[None], torch.zeros(1, length, dtype=torch.bool, device=audio.device),
                                 max_samples=length, frame=frame, threshold_db=float(threshold),
                                 margin=int(margin))[0][0]
        rows.append(row)
    return _stack_rows(rows, audio)


def clip_peaks(audio: Tensor, pad_mask: Tensor, *, probability: float = 0.25,
               overdrive_db: tuple[float, float] = (0.0, 20.0), generator: torch.Generator | None = None) -> Tensor:
    """Hard-clip a random ``probability`` of the waveforms, as a recording made too loud for its input: samples
    beyond a level ``overdrive_db`` dB (drawn per waveform) below the waveform's own peak are cut to that level.
    Lengths and the pad mask do not change; padding stays 0."""
    _check_waveforms(audio, pad_mask)
    batch = audio.shape[0]
    overdrive = _uniform(batch, overdrive_db, "overdrive_db", generator)
    if min(overdrive_db) < 0:
        raise ValueError(f"overdrive_db: expected dB >= 0 (low, high), got {tuple(overdrive_db)}")
    chosen = _chosen(batch, probability, generator).to(audio.device)
    real = zero_padding(audio, pad_mask)
    level = real.abs().amax(dim=1, keepdim=True) * (10 ** (-overdrive[:, None] / 20)).to(audio)
    return torch.where(chosen[:, None], torch.minimum(torch.maximum(real, -level), level), real)


MAINS_HZ = (50.0, 60.0)


def add_hum(audio: Tensor, pad_mask: Tensor, *, sample_rate: int, probability: float = 0.25,
            snr_db: tuple[float, float] = (10.0, 40.0), harmonics: int = 5,
            generator: torch.Generator | None = None) -> Tensor:
    """Mains hum on a random ``probability`` of the waveforms: a 50 or 60 Hz tone and its first ``harmonics``
    multiples, each with a random amplitude (falling as 1/k on average) and phase, at a signal-to-hum ratio drawn
    from ``snr_db`` over the waveform's real samples: the buzz of a cheap microphone near the mains. Lengths and the
    pad mask do not change; padding stays 0."""
    lengths = _check_waveforms(audio, pad_mask)
    if harmonics < 1:
        raise ValueError(f"harmonics: expected an int >= 1, got {harmonics}")
    batch, length = audio.shape
    snr = _uniform(batch, snr_db, "snr_db", generator)
    chosen = _chosen(batch, probability, generator)
    mains = torch.tensor(MAINS_HZ, dtype=torch.float64)[torch.randint(0, len(MAINS_HZ), (batch,), generator=generator)]
    k = torch.arange(1, harmonics + 1, dtype=torch.float64)
    amplitudes = torch.rand(batch, harmonics, generator=generator, dtype=torch.float64) * 2 / k
    phases = torch.rand(batch, harmonics, generator=generator, dtype=torch.float64) * 2 * math.pi
    t = torch.arange(length, dtype=torch.float64) / sample_rate
    hum = (amplitudes[:, :, None] * torch.sin(2 * math.pi * mains[:, None, None] * k[None, :, None] * t
                                               + phases[:, :, None])).sum(dim=1)
    real = zero_padding(audio, pad_mask)
    scale = _scale_to_snr(real, hum, pad_mask, lengths, snr) * chosen
    return zero_padding(real + (scale[:, None] * hum).to(audio), pad_mask)
