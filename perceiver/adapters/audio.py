"""Waveforms (B, T) → log-mel spectrogram → time-frequency patch tokens, computed in torch alone."""

from __future__ import annotations

import inspect
import math
from typing import Sequence

import torch
from einops import rearrange, repeat
from torch import Tensor, nn

from perceiver.adapters.base import InputAdapter
from perceiver.adapters.conv import ConvStem
from perceiver.adapters.checks import check_tensor
from perceiver.config import Pretrained, capture_config
from perceiver.masks import check_pad_mask, pad_mask_from_lengths, zero_padding
from perceiver.positions import as_shape, build_position_encoding, with_positions

MEL_SCALES = ("htk", "slaney")


def hz_to_mel(hz: Tensor, scale: str) -> Tensor:
    """HTK: 2595 log10(1 + f / 700). Slaney: linear (3 / 200 mel per Hz) below 1 kHz, logarithmic above."""
    if scale == "htk":
        return 2595.0 * torch.log10(1.0 + hz / 700.0)
    log_step = math.log(6.4) / 27.0
    return torch.where(hz < 1000.0, hz * 3.0 / 200.0, 15.0 + torch.log(hz.clamp(min=1e-10) / 1000.0) / log_step)


def mel_to_hz(mel: Tensor, scale: str) -> Tensor:
    if scale == "htk":
        return 700.0 * (10.0 ** (mel / 2595.0) - 1.0)
    log_step = math.log(6.4) / 27.0
    return torch.where(mel < 15.0, mel * 200.0 / 3.0, 1000.0 * torch.exp(log_step * (mel - 15.0)))


def mel_filterbank(
    *, sample_rate: int, n_fft: int, n_mels: int, f_min: float = 0.0, f_max: float | None = None, mel_scale: str = "htk"
) -> Tensor:
    """Triangular mel filters (n_fft // 2 + 1, n_mels), float64, each peaking at 1 (no area normalisation).

    Filter ``j`` rises from mel point ``j`` to ``j + 1`` and falls to ``j + 2``, for ``n_mels + 2`` points evenly
    spaced on the chosen mel scale between ``f_min`` and ``f_max`` (default: the Nyquist frequency).
    """
    if mel_scale not in MEL_SCALES:
        raise ValueError(f"mel_scale: expected one of {MEL_SCALES}, got {mel_scale!r}")
    f_max = sample_rate / 2 if f_max is None else f_max
    if not 0 <= f_min < f_max <= sample_rate / 2:
        raise ValueError(f"f_min, f_max: expected 0 <= f_min < f_max <= {sample_rate / 2}, got {f_min}, {f_max}")
    fft_freqs = torch.linspace(0, sample_rate / 2, n_fft // 2 + 1, dtype=torch.float64)
    limits = hz_to_mel(torch.tensor([f_min, f_max], dtype=torch.float64), mel_scale)
    points = mel_to_hz(torch.linspace(float(limits[0]), float(limits[1]), n_mels + 2, dtype=torch.float64), mel_scale)
    widths = points[1:] - points[:-1]
    offsets = points[None, :] - fft_freqs[:, None]  # (n_freqs, n_mels + 2)
    rising = -offsets[:, :-2] / widths[:-1]
    falling = offsets[:, 2:] / widths[1:]
    return torch.clamp(torch.minimum(rising, falling), min=0.0)


# ``normalize``: True and "utterance" subtract one mean per sample, "band" one per mel bin; False leaves the log-mel.
NORMALIZATIONS = (True, False, "utterance", "band")


class LogMelSpectrogram(Pretrained, nn.Module):
    """Waveforms (B, T) at ``sample_rate`` → log-mel spectrogram (B, F, n_mels) and its frame pad mask (B, F).

    ``torch.stft`` with a periodic Hann window of ``n_fft`` samples, ``center=False`` (frame ``t`` covers samples
    ``[t * hop_length, t * hop_length + n_fft)``, so a frame never sees padding nor a reflection of it), power
    spectrum, mel filterbank (``mel_scale`` ``"htk"`` or ``"slaney"``, filters peaking at 1), then
    ``log(mel + floor)``: ``log_floor``, or with ``floor_db`` that many dB below the sample's mean mel power over its
    real frames. With ``normalize`` (True or ``"utterance"``) each sample is standardised by the mean and
    standard deviation of its own real frames; with ``"band"`` each mel bin's mean over the sample's real frames is
    subtracted before the division (cepstral mean normalisation: a fixed filter on the way, a microphone's or a
    room's colouring, adds a constant to each bin of the log spectrum, which this removes). Frames that reach past a
    sample's real length are set to 0 and marked as padding, so a sample's real frames are the same alone or padded
    in a batch.

    ``floor_db`` sets the range the log keeps by the sample's own level, as Whisper's front end keeps 80 dB below each
    clip's loudest cell: whatever lies further below (a clean clip's silence, a noisy clip's hiss, a synthesiser's
    digital zero) reads about the same, where an absolute floor gives each its own values over a range of 100 dB
    and more.

    ``pad_mask`` is per waveform sample (B, T), True = padding, and must be trailing (real samples first). No trainable
    weights: the spectrogram front end of the spectrogram adapters.

    Augmentation, in training mode only (``module.train()``; evaluation is untouched), all off by default:

    - ``warp``: vocal tract length perturbation (Jaitly and Hinton, 2013). Each sample's power spectrum is read at
      frequencies scaled by a factor drawn from U(1 - warp, 1 + warp), piecewise linearly so that the Nyquist
      frequency stays: a longer or shorter vocal tract moves every formant by one factor.
    - ``time_masks`` masks of up to ``time_mask_frames`` consecutive frames and ``freq_masks`` masks of up to
      ``freq_mask_bins`` consecutive mel bins (SpecAugment, Park et al., 2019), set to 0 (the mean after
      ``normalize``). Time masks lie within each sample's real frames and are at most a fifth of them long; padded
      frames stay 0 and padding; the statistics of ``normalize`` are those of the unmasked spectrogram.
    """

    def __init__(self, *, sample_rate: int, n_fft: int, hop_length: int, n_mels: int, f_min: float = 0.0,
                 f_max: float | None = None, mel_scale: str = "htk", max_duration: float = 10.0,
                 normalize: bool | str = True, log_floor: float = 1e-6, floor_db: float | None = None,
                 warp: float = 0.0, time_masks: int = 0, time_mask_frames: int = 10, freq_masks: int = 0,
                 freq_mask_bins: int = 4):
        super().__init__()
        self.config = capture_config(locals())
        max_samples = round(max_duration * sample_rate)
        if max_samples < n_fft:
            raise ValueError(f"max_duration: expected at least one frame ({n_fft} samples), got {max_samples} samples")
        if normalize not in NORMALIZATIONS:
            raise ValueError(f"normalize: expected one of {NORMALIZATIONS}, got {normalize!r}")
        if floor_db is not None and not floor_db > 0:
            raise ValueError(f"floor_db: expected dB > 0 below the mean mel power (None: log_floor), got {floor_db}")
        if not 0.0 <= warp < 1.0:
            raise ValueError(f"warp: expected a fraction in [0, 1) (factors 1 - warp to 1 + warp), got {warp}")
        for name, value in (("time_masks", time_masks), ("time_mask_frames", time_mask_frames),
                            ("freq_masks", freq_masks), ("freq_mask_bins", freq_mask_bins)):
            if not isinstance(value, int) or value < 0:
                raise ValueError(f"{name}: expected an int >= 0, got {value!r}")
        if freq_mask_bins > n_mels:
            raise ValueError(f"freq_mask_bins: expected at most n_mels={n_mels}, got {freq_mask_bins}")
        self.n_fft, self.hop_length, self.n_mels = n_fft, hop_length, n_mels
        self.normalize = normalize
        self.log_floor = log_floor
        self.floor_db = floor_db
        self.warp = warp
        self.time_masks, self.time_mask_frames = time_masks, time_mask_frames
        self.freq_masks, self.freq_mask_bins = freq_masks, freq_mask_bins
        self.max_samples = max_samples
        fbank = mel_filterbank(
            sample_rate=sample_rate, n_fft=n_fft, n_mels=n_mels, f_min=f_min, f_max=f_max, mel_scale=mel_scale
        )
        # Kept in float64 and cast where used, so that a float64 forward is exact and a float32 one rounds once.
        self.register_buffer("filterbank", fbank, persistent=False)
        self.register_buffer("window", torch.hann_window(n_fft, dtype=torch.float64), persistent=False)
        self.max_frames = self.num_frames(max_samples)

    def num_frames(self, num_samples):
        """Frames that lie wholly within ``num_samples`` samples (an int or a tensor of them)."""
        if isinstance(num_samples, Tensor):
            return torch.where(num_samples >= self.n_fft, (num_samples - self.n_fft) // self.hop_length + 1, 0)
        return (num_samples - self.n_fft) // self.hop_length + 1 if num_samples >= self.n_fft else 0

    def check_input(self, x: Tensor, pad_mask: Tensor | None) -> Tensor:
        """Validate the waveforms and their mask; return each sample's real length (B,)."""
        check_tensor(x, "x", kind="float", rank=2, layout="(B, T) of waveform samples")
        batch_size, length = x.shape
        if length < self.n_fft:
            raise ValueError(f"x: expected at least one frame (T >= n_fft = {self.n_fft} samples), got T={length}")
        if length > self.max_samples:
            raise ValueError(f"x: expected at most max_duration's {self.max_samples} samples, got T={length}")
        if pad_mask is None:
            return torch.full((batch_size,), length, device=x.device)
        check_pad_mask(pad_mask, batch_size, length, note=" like x")
        lengths = length - pad_mask.sum(dim=1)
        if not torch.equal(pad_mask, pad_mask_from_lengths(lengths, length)):
            raise ValueError("pad_mask: expected trailing padding (each row False then True), got padding elsewhere")
        return lengths

    def forward(self, x: Tensor, pad_mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
        lengths = self.check_input(x, pad_mask)
        x = zero_padding(x, pad_mask)  # NaN or inf under the mask must not reach any frame
        # The power spectrum spans many orders of magnitude: keep it out of autocast's half precision.
        with torch.autocast(device_type=x.device.type, enabled=False):
            return self._log_mel(x, lengths)

    def _log_mel(self, x: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        # torch.stft has no half-precision CPU kernel; the spectrogram is computed in float32 (or float64).
        signal = x if x.dtype == torch.float64 else x.float()
        spectrum = torch.stft(
            signal,
            n_fft=self.n_fft,
            hop_length=self.hop_length,
            window=self.window.to(signal.dtype),
            center=False,
            return_complex=True,
        )
        power = spectrum.real**2 + spectrum.imag**2  # (B, n_freqs, F)
        if self.training and self.warp > 0:
            power = self._warp(power)
        mel = torch.einsum("bnf,nm->bfm", power, self.filterbank.to(signal.dtype))
        frame_pad = pad_mask_from_lengths(self.num_frames(lengths), mel.shape[1])
        log_mel = torch.log(mel + self._floor(mel, frame_pad))
        if self.normalize:
            log_mel = self._standardize(log_mel, frame_pad)
        if self.training and (self.time_masks or self.freq_masks):
            log_mel = log_mel.masked_fill(self._spec_augment_mask(self.num_frames(lengths), log_mel.shape[1]), 0.0)
        return log_mel.masked_fill(frame_pad[:, :, None], 0.0), frame_pad

    def _floor(self, mel: Tensor, frame_pad: Tensor) -> Tensor | float:
        """What is added to the mel power (B, F, n_mels) before the log: ``log_floor``, or ``floor_db`` below each
        sample's mean over its real frames (B, 1, 1); a silent sample, or one without real frames, gets
        ``log_floor``."""
        if self.floor_db is None:
            return self.log_floor
        mean = self._real_mean(mel, frame_pad)
        return torch.where(mean > 0, mean * 10 ** (-self.floor_db / 10), self.log_floor)

    def _standardize(self, log_mel: Tensor, frame_pad: Tensor) -> Tensor:
        """Each sample's log-mel less its mean over its real frames (one mean, or with ``"band"`` one per mel bin),
        divided by the standard deviation of what remains."""
        mean = self._real_mean(log_mel, frame_pad, per_band=self.normalize == "band")
        variance = self._real_mean((log_mel - mean) ** 2, frame_pad)
        return (log_mel - mean) / torch.sqrt(variance + 1e-5)

    def _real_mean(self, values: Tensor, frame_pad: Tensor, per_band: bool = False) -> Tensor:
        """The mean of ``values`` (B, F, n_mels) over each sample's real frames: (B, 1, 1), or with ``per_band``
        one per mel bin (B, 1, n_mels); a sample without real frames gets 0."""
        real = (~frame_pad)[:, :, None].to(values.dtype)
        frames = real.sum(dim=1, keepdim=True).clamp(min=1)  # (B, 1, 1)
        if per_band:
            return (values * real).sum(dim=1, keepdim=True) / frames
        return (values * real).sum(dim=(1, 2), keepdim=True) / (frames * self.n_mels)

    def _warp(self, power: Tensor) -> Tensor:
        """Each sample's power (B, n_freqs, F) read at bin ``k / a`` up to the boundary ``k0 = 0.9 K min(a, 1)``
        (K the Nyquist bin), then linearly to K, by linear interpolation between bins: formants move by ``a``."""
        batch, n_freqs, _ = power.shape
        factors = 1.0 + (torch.rand(batch, device=power.device, dtype=power.dtype) * 2 - 1) * self.warp
        nyquist = float(n_freqs - 1)
        bins = torch.arange(n_freqs, device=power.device, dtype=power.dtype)[None, :]
        boundary = 0.9 * nyquist * torch.clamp(factors, max=1.0)[:, None]
        below = bins / factors[:, None]
        above = boundary / factors[:, None] + (bins - boundary) * (nyquist - boundary / factors[:, None]) / (
            nyquist - boundary)
        source = torch.where(bins <= boundary, below, above).clamp(0, nyquist)
        low = source.floor().long().clamp(max=n_freqs - 2)
        weight = (source - low)[:, :, None]
        index = repeat(low, "b n -> b n f", f=power.shape[2])
        return power.gather(1, index) * (1 - weight) + power.gather(1, index + 1) * weight

    def _spec_augment_mask(self, real_frames: Tensor, num_frames: int) -> Tensor:
        """True where SpecAugment masks (B, F, n_mels): time masks inside each sample's ``real_frames``."""
        device = real_frames.device
        batch = real_frames.shape[0]
        frames = torch.arange(num_frames, device=device)[None, None, :]
        bins = torch.arange(self.n_mels, device=device)[None, None, :]
        # Widths: U{0..max}, at most a fifth of the sample's real frames (SpecAugment's upper bound p = 0.2).
        limit = torch.minimum(torch.full_like(real_frames, self.time_mask_frames), real_frames // 5)
        widths = (torch.rand(batch, self.time_masks, device=device) * (limit[:, None] + 1)).long()
        starts = (torch.rand(batch, self.time_masks, device=device) * (real_frames[:, None] - widths + 1)).long()
        in_time = ((frames >= starts[:, :, None]) & (frames < (starts + widths)[:, :, None])).any(dim=1)
        widths = (torch.rand(batch, self.freq_masks, device=device) * (self.freq_mask_bins + 1)).long()
        starts = (torch.rand(batch, self.freq_masks, device=device) * (self.n_mels - widths + 1)).long()
        in_freq = ((bins >= starts[:, :, None]) & (bins < (starts + widths)[:, :, None])).any(dim=1)
        return in_time[:, :, None] | in_freq[:, None, :]


def spectrogram_frontend(adapter_config: dict) -> LogMelSpectrogram:
    """The ``LogMelSpectrogram`` that an adapter's arguments (its captured config) describe: each adapter repeats the
    spectrogram's parameters in its own signature, so that they show there, and hands them on from here."""
    names = inspect.signature(LogMelSpectrogram.__init__).parameters
    return LogMelSpectrogram(**{name: value for name, value in adapter_config.items() if name in names})


class SpectrogramAdapter(InputAdapter):
    """Waveforms (B, T) at ``sample_rate`` → log-mel patches → tokens (B, M, num_channels) and a pad mask (B, M).

    Spectrogram: ``torch.stft`` with a periodic Hann window of ``n_fft`` samples, ``center=False`` (frame ``t``
    covers samples ``[t * hop_length, t * hop_length + n_fft)``, so a frame never sees padding nor a reflection of
    it), power spectrum, mel filterbank (``mel_scale`` ``"htk"`` or ``"slaney"``, filters peaking at 1), then
    ``log(mel + log_floor)`` (or a floor ``floor_db`` below the sample's mean mel power). With ``normalize`` each
    sample is standardised by the mean (``"band"``: each mel bin's mean) and standard deviation of its own real
    frames. Frames that reach past a sample's real length, and the frames added to fill the last time patch, are set
    to 0, so a sample's real tokens are the same whether it is alone or padded in a batch.

    Patches: ``patch_size = (frames, mel bins)``; tokens are time-major (all mel patches of the first time patch,
    then the next). A patch is padding when all its frames are beyond the sample's length. Positions are absolute
    cells of the patch grid of ``max_duration`` seconds.

    ``pad_mask`` is per waveform sample (B, T), True = padding, and must be trailing (real samples first). A
    sample with fewer than ``n_fft`` real samples has all its tokens masked.

    Args:
        sample_rate: Hz of the waveforms.
        n_fft: STFT window and frame length in samples.
        hop_length: samples between frames.
        n_mels: mel bins; must divide by ``patch_size[1]``.
        f_min, f_max: frequency range of the filterbank (f_max defaults to sample_rate / 2).
        mel_scale: ``"htk"`` or ``"slaney"``.
        max_duration: longest waveform in seconds.
        patch_size: (frames, mel bins) per patch.
        embed_channels: width of the linear patch embedding.
        positions: ``"fourier"`` (concatenated) or ``"learned"`` (added).
        num_bands: Fourier bands per dimension.
        normalize: standardise each sample's log-mel over its real frames: True or ``"utterance"`` (one mean),
            ``"band"`` (one mean per mel bin), False (off); see ``LogMelSpectrogram``.
        log_floor: added to the mel power before the log.
        floor_db: instead, a floor this many dB below each sample's mean mel power; see ``LogMelSpectrogram``.
        warp, time_masks, time_mask_frames, freq_masks, freq_mask_bins: training-mode augmentation of the
            spectrogram (vocal tract length perturbation, SpecAugment masks); see ``LogMelSpectrogram``. Off by
            default.
    """

    def __init__(
        self,
        *,
        sample_rate: int = 16000,
        n_fft: int = 400,
        hop_length: int = 160,
        n_mels: int = 64,
        f_min: float = 0.0,
        f_max: float | None = None,
        mel_scale: str = "htk",
        max_duration: float = 10.0,
        patch_size: int | Sequence[int] = (16, 16),
        embed_channels: int = 256,
        positions: str = "fourier",
        num_bands: int = 32,
        normalize: bool | str = True,
        log_floor: float = 1e-6,
        floor_db: float | None = None,
        warp: float = 0.0,
        time_masks: int = 0,
        time_mask_frames: int = 10,
        freq_masks: int = 0,
        freq_mask_bins: int = 4,
    ):
        super().__init__()
        self.config = capture_config(locals())
        patch = as_shape(patch_size, "patch_size")
        patch = patch * 2 if len(patch) == 1 else patch
        if len(patch) != 2:
            raise ValueError(f"patch_size: expected (frames, mel bins), got {patch}")
        if n_mels % patch[1]:
            raise ValueError(f"n_mels: expected a multiple of the mel patch size {patch[1]}, got {n_mels}")
        self.frontend = spectrogram_frontend(self.config)
        self.n_mels = n_mels
        self.patch_size = patch
        self.max_samples = self.frontend.max_samples
        self.max_grid = (math.ceil(self.frontend.max_frames / patch[0]), n_mels // patch[1])
        self.embedding = nn.Linear(patch[0] * patch[1], embed_channels)
        self.positions = build_position_encoding(
            positions, max_shape=self.max_grid, num_channels=embed_channels, num_bands=num_bands
        )
        self.concat_positions = positions == "fourier"
        self.num_channels = embed_channels + (self.positions.num_channels if self.concat_positions else 0)

    def num_frames(self, num_samples):
        """Frames that lie wholly within ``num_samples`` samples (an int or a tensor of them)."""
        return self.frontend.num_frames(num_samples)

    def log_mel(self, x: Tensor, pad_mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Log-mel spectrogram (B, F, n_mels), F = frames of T samples, and its frame pad mask (B, F)."""
        return self.frontend(x, pad_mask)

    def patchify(self, x: Tensor, pad_mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Log-mel patches (B, M, frames * mel bins), time-major, and their pad mask (B, M)."""
        log_mel, frame_pad = self.log_mel(x, pad_mask)
        frames_per_patch = self.patch_size[0]
        fill = -log_mel.shape[1] % frames_per_patch  # frames that complete the last time patch
        log_mel = nn.functional.pad(log_mel, (0, 0, 0, fill))
        frame_pad = nn.functional.pad(frame_pad, (0, fill), value=True)
        patches = rearrange(log_mel, "b (t pt) (f pf) -> b (t f) (pt pf)", pt=frames_per_patch, pf=self.patch_size[1])
        time_pad = rearrange(frame_pad, "b (t pt) -> b t pt", pt=frames_per_patch).all(dim=-1)
        return patches, repeat(time_pad, "b t -> b (t f)", f=self.max_grid[1])

    def forward(self, x: Tensor, pad_mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
        patches, token_pad = self.patchify(x, pad_mask)
        tokens = self.embedding(patches.to(self.embedding.weight.dtype))
        grid = (patches.shape[1] // self.max_grid[1], self.max_grid[1])
        return with_positions(tokens, self.positions, grid), token_pad


SPECTROGRAM_CONVS = ("time", "time-mel", "time-mel-frames")


class SpectrogramConvAdapter(InputAdapter):
    """Waveforms (B, T) → log-mel spectrogram → ``ConvStem`` → tokens (B, M, num_channels) and a pad mask (B, M).

    ``conv="time"``: 1-D convolutions over time with the mel bins as input channels (Whisper's front end); one token
    per output frame. ``conv="time-mel"``: 2-D 3×3 convolutions over the (time, mel) plane from one input channel;
    one token per cell of the output grid, time-major. ``conv="time-mel-frames"``: the same 2-D convolutions, then
    one token per output frame holding every mel cell's channels (``channels[-1] × ceil(n_mels / total stride)``),
    as the Conformer's subsampling does: the kernels are shared across frequency, so a formant pattern that sits
    higher or lower (another speaker's vocal tract) meets the same filters, at the 1-D stem's token count. Each
    stride-s layer keeps ``ceil(size / s)`` cells; a token is padding when all the frames of its stride cell are.
    The spectrogram is ``LogMelSpectrogram``'s (see there for the STFT, the mel scale and the per-sample
    standardisation); padded frames are zero before every convolution, so a sample's real tokens are the same alone
    or padded in a batch, whatever its length.

    Args: the spectrogram's (``sample_rate`` … ``max_duration``, ``normalize``, ``log_floor``, ``floor_db`` and the
    training-mode augmentation ``warp`` … ``freq_mask_bins``, as in ``SpectrogramAdapter``), then ``conv``, the
    stem's ``channels``, ``strides``, ``kernel_size`` and ``downsample`` (see ``ConvStem``), and the ``positions``
    (``"fourier"``, concatenated, or ``"learned"``, added) with ``num_bands`` per dimension.
    """

    def __init__(
        self,
        *,
        sample_rate: int = 16000,
        n_fft: int = 400,
        hop_length: int = 160,
        n_mels: int = 64,
        f_min: float = 0.0,
        f_max: float | None = None,
        mel_scale: str = "htk",
        max_duration: float = 10.0,
        conv: str = "time",
        channels: Sequence[int] = (256, 256),
        strides: Sequence[int] = (1, 2),
        kernel_size: int = 3,
        downsample: str = "stride",
        positions: str = "fourier",
        num_bands: int = 32,
        normalize: bool | str = True,
        log_floor: float = 1e-6,
        floor_db: float | None = None,
        warp: float = 0.0,
        time_masks: int = 0,
        time_mask_frames: int = 10,
        freq_masks: int = 0,
        freq_mask_bins: int = 4,
    ):
        super().__init__()
        self.config = capture_config(locals())
        if conv not in SPECTROGRAM_CONVS:
            raise ValueError(f"conv: expected one of {SPECTROGRAM_CONVS}, got {conv!r}")
        self.frontend = spectrogram_frontend(self.config)
        self.n_mels = n_mels
        self.max_samples = self.frontend.max_samples
        self.conv = conv
        time_only = conv == "time"
        self.stem = ConvStem(num_dims=1 if time_only else 2, in_channels=n_mels if time_only else 1,
                             channels=channels, strides=strides, kernel_size=kernel_size, downsample=downsample)
        stride = self.stem.total_stride
        time_cells, mel_cells = math.ceil(self.frontend.max_frames / stride), math.ceil(n_mels / stride)
        self.max_grid = (time_cells, mel_cells) if conv == "time-mel" else (time_cells,)
        token_channels = self.stem.num_channels * (mel_cells if conv == "time-mel-frames" else 1)
        self.positions = build_position_encoding(positions, max_shape=self.max_grid, num_channels=token_channels,
                                                 num_bands=num_bands)
        extra = self.positions.num_channels if positions == "fourier" else 0
        self.num_channels = token_channels + extra

    def forward(self, x: Tensor, pad_mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
        log_mel, frame_pad = self.frontend(x, pad_mask)  # (B, F, n_mels), (B, F)
        log_mel = log_mel.to(self.stem.convs[0].weight.dtype)  # the spectrogram is computed in the input's dtype
        frames_real = ~frame_pad
        if self.conv == "time":
            features, valid = self.stem(rearrange(log_mel, "b f m -> b m f"), frames_real)
        else:
            features, valid = self.stem(log_mel[:, None], repeat(frames_real, "b f -> b f m", m=self.n_mels))
        if self.conv == "time-mel-frames":  # a frame's validity is the same in every mel cell
            features, valid = rearrange(features, "b c f m -> b (c m) f"), valid[..., 0]
        tokens = with_positions(rearrange(features, "b c ... -> b (...) c"), self.positions, features.shape[2:])
        return tokens, ~valid.flatten(1)
