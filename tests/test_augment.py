"""perceiver.augment and the spectrogram front end's training-mode augmentation: what each does, measured against
float64 references, and that every one keeps waveform padding trailing and zero and frame masks right."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from perceiver import build_module, module_spec
from perceiver.adapters import LogMelSpectrogram, SpectrogramAdapter, SpectrogramConvAdapter
from perceiver.augment import (add_hum, add_noise, add_white_noise, change_speed, clip_peaks, crop, crop_to_speech,
                               delay, gain_and_tilt, occlude_and_add_noise, remove_dc, reverberate,
                               room_impulse_responses, shift_and_flip, telephone_band, trim_to_speech)
from perceiver.masks import pad_mask_from_lengths

RATE = 16000


def padded_noise(lengths, total, *, seed=0, dtype=torch.float64):
    generator = torch.Generator().manual_seed(seed)
    mask = pad_mask_from_lengths(torch.tensor(lengths), total)
    audio = torch.randn(len(lengths), total, generator=generator, dtype=dtype)
    return audio.masked_fill(mask, 0.0), mask


def band_power(x: np.ndarray, low: float, high: float) -> float:
    spectrum = np.abs(np.fft.rfft(x)) ** 2
    freqs = np.fft.rfftfreq(len(x), 1 / RATE)
    return float(spectrum[(freqs >= low) & (freqs < high)].mean())


def assert_padding_kept(out, mask):
    assert out.shape == mask.shape and torch.all(out[mask] == 0)
    assert torch.equal(mask, pad_mask_from_lengths((~mask).sum(dim=1), mask.shape[1]))  # trailing


# ----------------------------------------------------------------------------------------- waveform augmentations


def test_delay_puts_silence_in_front_and_keeps_padding_trailing():
    torch.manual_seed(0)
    audio = torch.arange(1, 13, dtype=torch.float32).reshape(2, 6)
    pad_mask = torch.tensor([[False] * 6, [False] * 3 + [True] * 3])
    shifted, new_mask = delay(audio, pad_mask, max_shift=4)
    assert shifted.shape == (2, 10)
    for row, length in ((0, 6), (1, 3)):
        real = int((~new_mask[row]).sum())
        lag = real - length
        assert 0 <= lag <= 4
        assert torch.equal(shifted[row, :lag], torch.zeros(lag))
        assert torch.equal(shifted[row, lag:real], audio[row, :length])
    assert_padding_kept(shifted, new_mask)


def test_change_speed_stretches_each_waveform_by_its_factor():
    torch.manual_seed(0)
    audio = torch.sin(torch.arange(3 * 400, dtype=torch.float32).reshape(3, 400) / 10)
    pad_mask = torch.arange(400)[None, :] >= torch.tensor([[400], [200], [40]])
    slow, slow_mask = change_speed(audio, pad_mask, speeds=(0.5, 0.5))
    assert (~slow_mask).sum(dim=1).tolist() == [800, 400, 80] and slow.shape == (3, 800)
    assert_padding_kept(slow, slow_mask)
    same, same_mask = change_speed(audio, pad_mask, speeds=(1.0, 1.0))
    assert torch.equal(same_mask, pad_mask) and torch.allclose(same * ~same_mask, audio * ~pad_mask)


@pytest.mark.parametrize("color, slope", [("white", 0.0), ("pink", -1.0), ("brown", -2.0)])
def test_noise_has_the_asked_snr_over_real_samples_and_colour(color, slope):
    audio, mask = padded_noise([20000, 12000, 20000, 16000], 20000)
    noisy = add_noise(audio, mask, snr_db=(20.0, 20.0), colors=(color,), generator=torch.Generator().manual_seed(1))
    assert_padding_kept(noisy, mask)
    noise = noisy - audio
    real = (~mask).sum(dim=1)
    snr = 10 * torch.log10(audio.pow(2).sum(1) / real / (noise.pow(2).sum(1) / real))
    torch.testing.assert_close(snr, torch.full_like(snr, 20.0), atol=1e-6, rtol=0)
    # The power spectrum's log-log slope between 100 Hz and 4 kHz (octave bands of the first, unpadded row).
    row = noise[0].numpy()
    centers = [125 * 2**k for k in range(6)]
    powers = [band_power(row, c / math.sqrt(2), c * math.sqrt(2)) for c in centers]
    fitted = np.polyfit(np.log(centers), np.log(powers), 1)[0]
    assert abs(fitted - slope) < 0.25, f"{color}: slope {fitted:.2f}"


def test_noise_rejects_unknown_colours_and_bad_ranges():
    audio, mask = padded_noise([100], 100)
    with pytest.raises(ValueError, match="colors"):
        add_noise(audio, mask, snr_db=(10, 20), colors=("blue",))
    with pytest.raises(ValueError, match="snr_db"):
        add_noise(audio, mask, snr_db=(20, 10))


def test_room_impulse_responses_decay_60_db_in_rt60():
    rt60 = torch.tensor([0.2, 0.5], dtype=torch.float64)
    responses = room_impulse_responses(rt60, sample_rate=RATE, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(responses.pow(2).sum(1), torch.ones(2, dtype=torch.float64))
    for row, seconds in zip(responses, rt60.tolist()):
        window = int(0.01 * RATE)
        start = row[:window].pow(2).mean()
        at_rt60 = row[int(seconds * RATE) - window: int(seconds * RATE)].pow(2).mean()
        drop = 10 * math.log10(float(at_rt60 / start))
        assert -66 < drop < -54, f"RT60 {seconds}: {drop:.1f} dB"


def test_reverberation_matches_a_float64_convolution_and_keeps_padding():
    audio, mask = padded_noise([8000, 3000], 8000)
    generator = torch.Generator().manual_seed(3)
    out = reverberate(audio, mask, sample_rate=RATE, rt60=(0.3, 0.3), wet=(0.5, 0.5), probability=1.0,
                      generator=generator)
    assert_padding_kept(out, mask)
    # The same draws again give the impulse responses; the reference convolves in float64 with numpy.
    generator = torch.Generator().manual_seed(3)
    torch.rand(2, generator=generator, dtype=torch.float64), torch.rand(2, generator=generator, dtype=torch.float64)
    torch.rand(2, generator=generator)
    responses = room_impulse_responses(torch.full((2,), 0.3, dtype=torch.float64), sample_rate=RATE,
                                       generator=generator)
    for row, length in enumerate((8000, 3000)):
        dry = audio[row, :length].numpy()
        wet = np.convolve(dry, responses[row].numpy())[:length]
        mixed = 0.5 * dry + 0.5 * wet
        mixed *= np.sqrt((dry**2).sum() / (mixed**2).sum())
        np.testing.assert_allclose(out[row, :length].numpy(), mixed, rtol=0, atol=1e-9)
    untouched = reverberate(audio, mask, sample_rate=RATE, probability=0.0)
    assert torch.equal(untouched, audio)


def test_telephone_band_removes_what_a_phone_line_cannot_carry():
    audio, mask = padded_noise([32000, 16000], 32000)
    out = telephone_band(audio, mask, sample_rate=RATE, probability=1.0)
    assert_padding_kept(out, mask)
    for row, length in ((0, 32000), (1, 16000)):
        before, after = audio[row, :length].numpy(), out[row, :length].numpy()
        gain = lambda low, high: 10 * math.log10(band_power(after, low, high) / band_power(before, low, high))  # noqa
        assert gain(4600, 8000) < -40 and gain(20, 100) < -25  # beyond the band and its filters' slopes
        assert abs(gain(500, 3000) - gain(1000, 2000)) < 3  # flat within it
    assert torch.equal(telephone_band(audio, mask, sample_rate=RATE, probability=0.0), audio)
    with pytest.raises(ValueError, match="band"):
        telephone_band(audio, mask, sample_rate=RATE, band=(300, 9000))


def test_gain_and_tilt_against_the_difference_equation():
    audio, mask = padded_noise([4000, 1500], 4000)
    out = gain_and_tilt(audio, mask, gain_db=(6.0, 6.0), tilt=(0.5, 0.5))
    assert_padding_kept(out, mask)
    for row, length in ((0, 4000), (1, 1500)):
        x = audio[row, :length].numpy()
        y = x - 0.5 * np.concatenate([[0.0], x[:-1]])
        y *= np.sqrt((x**2).sum() / (y**2).sum()) * 10 ** (6 / 20)
        np.testing.assert_allclose(out[row, :length].numpy(), y, rtol=0, atol=1e-10)
    with pytest.raises(ValueError, match="tilt"):
        gain_and_tilt(audio, mask, tilt=(-1.5, 0.5))
    with pytest.raises(ValueError, match="wet"):
        reverberate(audio, mask, sample_rate=RATE, wet=(0.5, 1.5))


def test_crop_to_speech_finds_the_word_at_any_level_and_silence():
    word = torch.sin(torch.arange(4000, dtype=torch.float64) / 5)  # a quarter second of "speech"
    audio = torch.zeros(3, 40000, dtype=torch.float64)
    audio[0, 30000:34000] = word                      # long silence first
    audio[1, :4000] = 1e-3 * word                     # tightly trimmed and quiet
    audio[2, 10000:14000] = word                      # then padding
    mask = pad_mask_from_lengths(torch.tensor([40000, 4000, 20000]), 40000)
    audio = audio + 1e-6 * torch.randn(3, 40000, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    audio = audio.masked_fill(mask, 0.0)
    out, out_mask = crop_to_speech(audio, mask, max_samples=16000)
    assert_padding_kept(out, out_mask)
    lengths = (~out_mask).sum(dim=1).tolist()
    # The word's 26 frames (160 samples each, the word starting mid-frame) and 10 frames of margin on each side,
    # within the clip.
    assert lengths == [26 * 160 + 2 * 1600, 4000, 26 * 160 + 2 * 1600]
    torch.testing.assert_close(out[0, 1680:5680], audio[0, 30000:34000])
    narrow, narrow_mask = crop_to_speech(audio, mask, max_samples=16000, margin=2)
    assert (~narrow_mask).sum(dim=1).tolist() == [26 * 160 + 2 * 320, 4000, 26 * 160 + 2 * 320]
    torch.testing.assert_close(narrow[0, 400:4400], audio[0, 30000:34000])
    torch.testing.assert_close(out[1, :4000], audio[1, :4000])
    longer, longer_mask = crop_to_speech(audio, mask, max_samples=1000)  # the loudest 1,000 samples
    assert (~longer_mask).sum(dim=1).tolist() == [1000, 1000, 1000]


def test_remove_dc_takes_each_waveforms_mean_over_its_real_samples_only():
    audio, mask = padded_noise([3000, 1200], 3000)
    offset = torch.tensor([[0.5], [-2.0]], dtype=torch.float64)
    out = remove_dc(audio.masked_fill(mask, 0.0) + offset * (~mask), mask)
    assert_padding_kept(out, mask)
    for row, length in ((0, 3000), (1, 1200)):
        x = audio[row, :length].numpy()
        np.testing.assert_allclose(out[row, :length].numpy(), x - x.mean(), rtol=0, atol=1e-12)
    # With an offset, crop_to_speech finds no silence; once it is removed, the same cut as without one.
    word = torch.zeros(1, 20000, dtype=torch.float64)
    word[0, 8000:12000] = torch.sin(torch.arange(4000, dtype=torch.float64) / 5)
    none = torch.zeros(1, 20000, dtype=torch.bool)
    offset_cut = crop_to_speech(word + 0.3, none, max_samples=20000)[1]
    clean_cut = crop_to_speech(word, none, max_samples=20000)[1]
    assert int((~offset_cut).sum()) == 20000 and int((~clean_cut).sum()) < 8000
    assert torch.equal(crop_to_speech(remove_dc(word + 0.3, none), none, max_samples=20000)[1], clean_cut)


def test_trim_to_speech_cuts_tight_around_the_word_and_keeps_padding_trailing():
    word = torch.sin(torch.arange(4000, dtype=torch.float64) / 5)
    audio = torch.zeros(3, 24000, dtype=torch.float64)
    audio[0, 6000:10000] = word
    audio[1, 2000:6000] = word
    audio[2, 16080:20080] = word
    mask = pad_mask_from_lengths(torch.tensor([24000, 9000, 22000]), 24000)
    out, out_mask = trim_to_speech(audio, mask, probability=1.0, threshold_db=(40.0, 40.0), max_margin=0)
    assert_padding_kept(out, out_mask)
    # 4,000 samples that start and end mid-frame: 26 whole frames of 160 samples, the word inside them.
    assert (~out_mask).sum(dim=1).tolist() == [26 * 160] * 3
    torch.testing.assert_close(out[0, 80:4080], word)  # the word began 6,000 - 5,920 = 80 samples into frame 37
    margins = trim_to_speech(audio, mask, probability=1.0, threshold_db=(40.0, 40.0), max_margin=3,
                             generator=torch.Generator().manual_seed(0))[1]
    assert all(26 * 160 <= n <= 32 * 160 for n in (~margins).sum(dim=1).tolist())
    kept, kept_mask = trim_to_speech(audio, mask, probability=0.0)
    assert torch.equal(kept[:, :24000], audio) and torch.equal(kept_mask, mask)
    with pytest.raises(ValueError, match="max_margin"):
        trim_to_speech(audio, mask, max_margin=-1)
    with pytest.raises(ValueError, match="threshold_db"):
        trim_to_speech(audio, mask, threshold_db=(40.0, 20.0))


def test_clip_peaks_cuts_at_the_drawn_level_below_each_peak():
    audio, mask = padded_noise([2000, 800], 2000)
    out = clip_peaks(audio, mask, probability=1.0, overdrive_db=(12.0, 12.0))
    assert_padding_kept(out, mask)
    for row, length in ((0, 2000), (1, 800)):
        x = audio[row, :length].numpy()
        level = np.abs(x).max() * 10 ** (-12 / 20)
        np.testing.assert_allclose(out[row, :length].numpy(), np.clip(x, -level, level), rtol=0, atol=1e-12)
    assert torch.equal(clip_peaks(audio, mask, probability=0.0), audio)
    with pytest.raises(ValueError, match="overdrive_db"):
        clip_peaks(audio, mask, overdrive_db=(-3.0, 6.0))


def test_hum_sits_at_the_mains_harmonics_at_the_asked_snr():
    audio, mask = padded_noise([32000, 16000], 32000)
    out = add_hum(audio, mask, sample_rate=RATE, probability=1.0, snr_db=(10.0, 10.0))
    assert_padding_kept(out, mask)
    for row, length in ((0, 32000), (1, 16000)):
        hum = (out - audio)[row, :length].numpy()
        snr = 10 * math.log10((audio[row, :length].numpy() ** 2).mean() / (hum**2).mean())
        assert abs(snr - 10.0) < 1e-6
        spectrum = np.abs(np.fft.rfft(hum)) ** 2
        freqs = np.fft.rfftfreq(length, 1 / RATE)
        at_mains = [spectrum[np.isclose(freqs % base, 0) & (freqs > 0) & (freqs <= 5 * base)].sum()
                    for base in (50.0, 60.0)]
        assert max(at_mains) > 0.99 * spectrum.sum()  # all of it on the harmonics of 50 or of 60 Hz
    assert torch.equal(add_hum(audio, mask, sample_rate=RATE, probability=0.0), audio)
    with pytest.raises(ValueError, match="harmonics"):
        add_hum(audio, mask, sample_rate=RATE, harmonics=0)


def test_crop_keeps_the_first_samples():
    audio, mask = padded_noise([10, 4], 10)
    out, out_mask = crop(audio, mask, 6)
    assert torch.equal(out, audio[:, :6]) and torch.equal(out_mask, mask[:, :6])
    with pytest.raises(ValueError, match="pad_mask"):
        crop(audio, ~mask, 6)


# ------------------------------------------------------------------------------------- spectrogram augmentation

FRONT = dict(sample_rate=RATE, n_fft=400, hop_length=160, n_mels=32, f_max=4000.0, max_duration=1.0)


def test_spectrogram_augmentation_leaves_evaluation_untouched():
    audio, mask = padded_noise([16000, 9000], 16000, dtype=torch.float32)
    plain = LogMelSpectrogram(**FRONT)
    augmented = LogMelSpectrogram(**FRONT, warp=0.2, time_masks=2, freq_masks=2)
    expected = plain(audio, mask)
    augmented.eval()
    got = augmented(audio, mask)
    assert torch.equal(got[0], expected[0]) and torch.equal(got[1], expected[1])
    augmented.train()
    torch.manual_seed(0)
    trained = augmented(audio, mask)
    assert not torch.equal(trained[0], expected[0]) and torch.equal(trained[1], expected[1])
    plain.train()
    assert torch.equal(plain(audio, mask)[0], expected[0])  # training mode without options: the same


def test_spec_augment_masks_touch_only_real_frames():
    front = LogMelSpectrogram(**FRONT, time_masks=3, time_mask_frames=10, freq_masks=2, freq_mask_bins=5).train()
    audio, mask = padded_noise([16000, 9000, 2000], 16000, dtype=torch.float32)
    real_frames = front.num_frames((~mask).sum(dim=1))
    front.eval()
    clean, frame_pad = front(audio, mask)
    front.train()
    for seed in range(20):
        torch.manual_seed(seed)
        masked, masked_pad = front(audio, mask)
        assert torch.equal(masked_pad, frame_pad) and torch.all(masked[frame_pad] == 0)
        zeroed = (masked == 0) & (clean != 0)
        for row, frames in enumerate(real_frames.tolist()):
            bins = zeroed[row, :frames].all(dim=0)  # frequency masks: whole bins over the real frames
            times = zeroed[row, :frames][:, ~bins].all(dim=1) if (~bins).any() else torch.zeros(frames, dtype=bool)
            assert int(bins.sum()) <= 2 * 5 and int(times.sum()) <= 3 * min(10, frames // 5)
            assert torch.equal(zeroed[row, :frames], times[:, None] | bins[None, :])  # nothing but the masks
        torch.manual_seed(seed)
        table = front._spec_augment_mask(real_frames, masked.shape[1])
        for row, frames in enumerate(real_frames.tolist()):
            masked_times = table[row].all(dim=1).nonzero()[:, 0]
            assert masked_times.numel() == 0 or int(masked_times.max()) < frames


def test_warp_moves_formants_by_one_factor_against_a_float64_reference():
    front = LogMelSpectrogram(**FRONT, warp=0.15).train().double()
    generator = torch.Generator().manual_seed(0)
    power = torch.rand(4, 201, 5, generator=generator, dtype=torch.float64)
    torch.manual_seed(7)
    warped = front._warp(power)
    torch.manual_seed(7)
    factors = 1.0 + (torch.rand(4, dtype=torch.float64) * 2 - 1) * 0.15
    nyquist = 200.0
    for row, a in enumerate(factors.tolist()):
        boundary = 0.9 * nyquist * min(a, 1.0)
        bins = np.arange(201.0)
        source = np.where(bins <= boundary, bins / a,
                          boundary / a + (bins - boundary) * (nyquist - boundary / a) / (nyquist - boundary))
        for frame in range(5):
            expected = np.interp(source, bins, power[row, :, frame].numpy())
            np.testing.assert_allclose(warped[row, :, frame].numpy(), expected, rtol=0, atol=1e-12)
    tone = torch.zeros(1, 201, 1, dtype=torch.float64)
    tone[0, 50, 0] = 1.0  # 2 kHz at 16 kHz with n_fft 400
    torch.manual_seed(7)
    peak = int(front._warp(tone)[0, :, 0].argmax())
    assert abs(peak - 50 * factors[0].item()) <= 1


@pytest.mark.parametrize("adapter_class, extra", [
    (SpectrogramAdapter, dict(patch_size=(4, 32), embed_channels=8, num_bands=2)),
    (SpectrogramConvAdapter, dict(channels=(8, 8), strides=(1, 2), num_bands=2)),
])
def test_adapters_keep_the_augmentation_in_their_config_and_use_it_only_in_training(adapter_class, extra):
    options = dict(warp=0.1, time_masks=2, time_mask_frames=5, freq_masks=1, freq_mask_bins=3)
    torch.manual_seed(0)
    adapter = adapter_class(**FRONT, **extra, **options)
    rebuilt = build_module(module_spec(adapter))
    assert {key: rebuilt.config[key] for key in options} == options
    assert rebuilt.frontend.warp == 0.1 and rebuilt.frontend.freq_masks == 1
    torch.manual_seed(0)
    plain = adapter_class(**FRONT, **extra)
    plain.load_state_dict(adapter.state_dict())
    audio, mask = padded_noise([16000, 7000], 16000, dtype=torch.float32)
    adapter.eval(), plain.eval()
    tokens, token_pad = adapter(audio, mask)
    expected, expected_pad = plain(audio, mask)
    assert torch.equal(tokens, expected) and torch.equal(token_pad, expected_pad)
    adapter.train()
    trained, trained_pad = adapter(audio, mask)
    assert torch.equal(trained_pad, expected_pad) and not torch.equal(trained, expected)


def test_bad_augmentation_options_name_the_argument():
    with pytest.raises(ValueError, match="warp"):
        LogMelSpectrogram(**FRONT, warp=1.5)
    with pytest.raises(ValueError, match="time_masks"):
        LogMelSpectrogram(**FRONT, time_masks=-1)
    with pytest.raises(ValueError, match="freq_mask_bins"):
        LogMelSpectrogram(**FRONT, freq_mask_bins=40)


def image_variants(image: torch.Tensor, max_shift: int, flip: bool) -> list[torch.Tensor]:
    """Every image ``shift_and_flip`` may make of ``image`` (C, H, W): each shift of a zero-padded copy, mirrored
    or not."""
    height, width = image.shape[-2:]
    padded = torch.nn.functional.pad(image, (max_shift,) * 4)
    shifted = [padded[:, top:top + height, left:left + width]
               for top in range(2 * max_shift + 1) for left in range(2 * max_shift + 1)]
    return shifted + [view.flip(-1) for view in shifted] if flip else shifted


@pytest.mark.parametrize("max_shift, flip", [(2, True), (1, False), (0, True)])
def test_shift_and_flip_makes_only_shifted_or_mirrored_copies(max_shift, flip):
    images = torch.rand(64, 1, 6, 5, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    out = shift_and_flip(images, max_shift=max_shift, flip=flip, generator=torch.Generator().manual_seed(2))
    assert out.shape == images.shape and out.dtype == images.dtype
    chosen = []
    for image, augmented in zip(images, out):
        variants = image_variants(image, max_shift, flip)
        matches = [index for index, variant in enumerate(variants) if torch.equal(variant, augmented)]
        assert matches, "an augmented image is no shift or mirror of its input"
        chosen.append(matches[0])
    # the draw uses more than one of the variants (64 images: one alone has probability < 1e-30)
    assert len(set(chosen)) > 1
    if max_shift == 0:  # flips alone: about half mirrored
        assert 16 <= sum(index == 1 for index in chosen) <= 48


def test_occlusion_noises_only_the_square_and_stays_in_range():
    images = torch.zeros(6, 1, 28, 28)
    out = occlude_and_add_noise(images, noise_std=0.0, occlusion=10, generator=torch.Generator().manual_seed(0))
    changed = (out != 0).flatten(1).sum(dim=1)
    assert ((changed > 80) & (changed <= 100)).all()  # uniform noise in [0, 1) is 0 with probability ~0
    rows, cols = torch.nonzero(out[0, 0], as_tuple=True)
    assert int(rows.max() - rows.min()) < 10 and int(cols.max() - cols.min()) < 10
    noisy = occlude_and_add_noise(torch.full((4, 1, 28, 28), 0.5), noise_std=0.3, occlusion=0)
    assert noisy.min() >= 0 and noisy.max() <= 1 and abs(float(noisy.std()) - 0.3) < 0.03


def test_white_noise_reaches_the_asked_snr_and_keeps_padding_silent():
    generator = torch.Generator().manual_seed(0)
    audio = torch.randn(3, 8000, generator=generator, dtype=torch.float64)
    pad_mask = torch.zeros(3, 8000, dtype=torch.bool)
    pad_mask[1, 6000:] = True
    audio = audio.masked_fill(pad_mask, 0.0)
    noisy = add_white_noise(audio, pad_mask, snr_db=-6.0, generator=generator)
    assert (noisy[1, 6000:] == 0).all()
    noise = (noisy - audio)[0]
    snr = 10 * math.log10(float((audio[0] ** 2).mean()) / float((noise**2).mean()))
    assert snr == pytest.approx(-6.0, abs=0.2)
    assert add_white_noise(audio, pad_mask, snr_db=None) is audio
