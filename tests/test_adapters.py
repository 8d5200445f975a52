import math

import numpy as np
import pytest
import torch

from perceiver.adapters import (
    MASK_ID,
    PAD_ID,
    VOCAB_SIZE,
    ByteAdapter,
    MultimodalAdapter,
    PatchAdapter,
    SpectrogramAdapter,
    mel_filterbank,
)
from perceiver.adapters.audio import hz_to_mel


def small_spectrogram_adapter(**overrides):
    kwargs = dict(
        sample_rate=8000,
        n_fft=64,
        hop_length=32,
        n_mels=8,
        max_duration=0.5,
        patch_size=(4, 4),
        embed_channels=16,
        num_bands=4,
    )
    return SpectrogramAdapter(**{**kwargs, **overrides})


def assert_trains(module, tokens):
    tokens.square().mean().backward()
    grads = [p.grad for p in module.parameters() if p.requires_grad]
    assert grads and all(g is not None and torch.isfinite(g).all() for g in grads)
    assert any(g.abs().sum() > 0 for g in grads)


# ---------------------------------------------------------------- bytes


@pytest.mark.parametrize("positions", ["learned", "fourier"])
def test_byte_adapter_shapes_and_gradients(positions):
    adapter = ByteAdapter(max_length=32, embed_channels=16, positions=positions, num_bands=8)
    ids, pad_mask = adapter.encode(["hello", "wörld, longer"])
    tokens, mask = adapter(ids)
    width = 16 if positions == "learned" else 16 + 2 * 8 + 1
    assert adapter.num_channels == width and tokens.shape == (2, ids.shape[1], width)
    assert torch.equal(mask, pad_mask) and mask[0, 5:].all() and not mask[0, :5].any() and not mask[1].any()
    assert_trains(adapter, tokens)


def test_byte_encode_decode_round_trip_and_special_ids():
    adapter = ByteAdapter(max_length=16)
    ids, pad_mask = adapter.encode(["añb", ""])
    assert ids[0, :4].tolist() == list("añb".encode()) and ids[1].eq(PAD_ID).all() and pad_mask[1].all()
    assert ByteAdapter.decode(ids) == ["añb", ""]
    assert len({PAD_ID, MASK_ID, VOCAB_SIZE - 1}) == 3 and VOCAB_SIZE == 260
    with pytest.raises(ValueError, match=r"texts\[0\]: expected at most max_length=16 UTF-8 bytes, got 17"):
        adapter.encode(["x" * 17])
    assert adapter.encode(["x" * 17], truncate=True)[0].shape == (1, 16)


def test_byte_pad_mask_given_wins_over_pad_ids():
    adapter = ByteAdapter(max_length=8, embed_channels=4)
    ids = torch.tensor([[1, 2, PAD_ID, PAD_ID]])
    given = torch.tensor([[False, True, False, True]])
    assert torch.equal(adapter(ids, given)[1], given)
    assert adapter(ids)[1].tolist() == [[False, False, True, True]]


@pytest.mark.parametrize("positions", ["learned", "fourier"])
def test_byte_tokens_do_not_depend_on_padding(positions):
    adapter = ByteAdapter(max_length=64, embed_channels=8, positions=positions, num_bands=8)
    alone, _ = adapter(adapter.encode(["short"])[0])
    batch_ids, batch_mask = adapter.encode(["short", "a much longer text than that"])
    padded, mask = adapter(batch_ids)
    torch.testing.assert_close(padded[0, :5], alone[0], atol=1e-6, rtol=0)
    assert mask[0, 5:].all()


def test_byte_adapter_errors():
    adapter = ByteAdapter(max_length=8, embed_channels=4)
    with pytest.raises(
        TypeError, match=r"x: expected an integer dtype tensor of shape \(B, M\).*got dtype torch.float32"
    ):
        adapter(torch.zeros(2, 3))
    with pytest.raises(ValueError, match=r"x: expected a 2-D tensor.*got shape \(3,\)"):
        adapter(torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match="x: expected a non-empty batch.*got batch size 0"):
        adapter(torch.zeros(0, 3, dtype=torch.long))
    with pytest.raises(ValueError, match=r"x: expected ids in \[0, 260\), got values in \[0, 300\]"):
        adapter(torch.tensor([[0, 300]]))
    with pytest.raises(ValueError, match="x: expected a length M between 1 and max_length=8, got 9"):
        adapter(torch.zeros(1, 9, dtype=torch.long))
    with pytest.raises(ValueError, match=r"pad_mask: expected shape \(1, 3\), got \(1, 4\)"):
        adapter(torch.zeros(1, 3, dtype=torch.long), torch.zeros(1, 4, dtype=torch.bool))
    with pytest.raises(TypeError, match="pad_mask: expected dtype torch.bool"):
        adapter(torch.zeros(1, 3, dtype=torch.long), torch.zeros(1, 3))


# ---------------------------------------------------------------- patches


@pytest.mark.parametrize("positions", ["learned", "fourier"])
def test_patch_adapter_images_of_any_divisible_size(positions):
    adapter = PatchAdapter(
        in_channels=3, max_size=(32, 48), patch_size=8, embed_channels=16, positions=positions, num_bands=4
    )
    for height, width in [(32, 48), (16, 24), (8, 8)]:
        image = torch.randn(2, 3, height, width, requires_grad=True)
        tokens, mask = adapter(image)
        assert tokens.shape == (2, height // 8 * (width // 8), adapter.num_channels) and mask is None
    assert adapter.num_channels == (16 if positions == "learned" else 16 + 2 * (2 * 4 + 1))
    assert_trains(adapter, tokens)
    assert image.grad is not None and image.grad.abs().sum() > 0


def test_patches_are_cut_row_major_with_channel_last_inside_a_patch():
    adapter = PatchAdapter(in_channels=2, max_size=(4, 6), patch_size=(2, 3), embed_channels=4)
    image = torch.arange(2 * 4 * 6, dtype=torch.float32).reshape(1, 2, 4, 6)
    patches = adapter.patchify(image)
    assert patches.shape == (1, 4, 12)
    expected = image[0, :, 2:4, 3:6].permute(1, 2, 0).reshape(-1)  # patch (row 1, column 1)
    assert torch.equal(patches[0, 3], expected)


def test_raw_pixel_mode_is_pixels_then_fourier_features():
    adapter = PatchAdapter(in_channels=3, max_size=(6, 5), patch_size=1, embed_channels=None, num_bands=4)
    image = torch.randn(2, 3, 6, 5)
    tokens, _ = adapter(image)
    assert adapter.num_channels == 3 + 2 * (2 * 4 + 1) and tokens.shape == (2, 30, adapter.num_channels)
    assert torch.equal(tokens[..., :3], image.permute(0, 2, 3, 1).reshape(2, 30, 3))
    torch.testing.assert_close(tokens[0, :, 3:], adapter.positions.grid((6, 5)), atol=0, rtol=0)
    assert sum(p.numel() for p in adapter.parameters()) == 0


def test_one_dimensional_signals_and_padding_invariance():
    adapter = PatchAdapter(in_channels=2, max_size=(64,), patch_size=4, embed_channels=8, num_bands=4)
    signal = torch.randn(1, 2, 20)
    alone, alone_mask = adapter(signal)
    batch = torch.zeros(2, 2, 40)
    batch[0, :, :20] = signal[0]
    batch[1] = torch.randn(2, 40)
    pad_mask = torch.zeros(2, 40, dtype=torch.bool)
    pad_mask[0, 20:] = True
    padded, mask = adapter(batch, pad_mask)
    assert alone_mask is None and padded.shape == (2, 10, adapter.num_channels)
    assert mask[0].tolist() == [False] * 5 + [True] * 5 and not mask[1].any()
    torch.testing.assert_close(padded[0, :5], alone[0], atol=1e-6, rtol=0)


def test_patch_adapter_errors():
    adapter = PatchAdapter(in_channels=3, max_size=(64, 64), patch_size=16, embed_channels=8)
    with pytest.raises(
        ValueError,
        match=r"size H=30 \(input size \(30, 32\)\) is not divisible by the patch size 16.*nearest valid sizes: \[16, 32\]",
    ):
        adapter(torch.zeros(1, 3, 30, 32))
    with pytest.raises(ValueError, match=r"x: expected 3 channels \(dim 1 of \(B, C, H, W\)\), got 1"):
        adapter(torch.zeros(1, 1, 32, 32))
    with pytest.raises(ValueError, match=r"x: expected a 4-D tensor of shape \(B, C, H, W\), got shape \(3, 32, 32\)"):
        adapter(torch.zeros(3, 32, 32))
    with pytest.raises(TypeError, match="x: expected a floating-point dtype.*got dtype torch.uint8"):
        adapter(torch.zeros(1, 3, 32, 32, dtype=torch.uint8))
    with pytest.raises(ValueError, match="x: expected a non-empty batch"):
        adapter(torch.zeros(0, 3, 32, 32))
    with pytest.raises(ValueError, match=r"size W=80.*exceeds max_size=\(64, 64\)"):
        adapter(torch.zeros(1, 3, 32, 80))
    with pytest.raises(ValueError, match=r"pad_mask: expected shape \(1, 32, 32\).*got \(1, 32\)"):
        adapter(torch.zeros(1, 3, 32, 32), torch.zeros(1, 32, dtype=torch.bool))
    with pytest.raises(ValueError, match="positions: raw mode"):
        PatchAdapter(embed_channels=None, positions="learned")
    with pytest.raises(ValueError, match="max_size: expected a multiple of patch_size"):
        PatchAdapter(max_size=(30, 32), patch_size=16)


# ---------------------------------------------------------------- spectrograms


def reference_log_mel(waveform: np.ndarray, *, sample_rate, n_fft, hop, n_mels, scale, floor=1e-6, band=False,
                      floor_db=None):
    """float64 log-mel of one waveform, frame by frame with numpy, normalised over all its frames (``band``: less
    each mel bin's own mean; ``floor_db``: the floor that many dB below the mean mel power)."""
    window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(n_fft) / n_fft)  # periodic Hann
    frames = [waveform[s : s + n_fft] * window for s in range(0, len(waveform) - n_fft + 1, hop)]
    power = np.abs(np.fft.rfft(np.stack(frames), axis=-1)) ** 2
    fbank = mel_filterbank(sample_rate=sample_rate, n_fft=n_fft, n_mels=n_mels, mel_scale=scale).numpy()
    mel = power @ fbank
    if floor_db is not None:
        floor = mel.mean() / 10 ** (floor_db / 10)
    log_mel = np.log(mel + floor)
    centred = log_mel - (log_mel.mean(axis=0) if band else log_mel.mean())
    return centred / np.sqrt((centred**2).mean() + 1e-5)


@pytest.mark.parametrize("scale", ["htk", "slaney"])
def test_mel_filterbank_matches_triangles_written_out(scale):
    sample_rate, n_fft, n_mels = 8000, 64, 6
    fbank = mel_filterbank(sample_rate=sample_rate, n_fft=n_fft, n_mels=n_mels, mel_scale=scale)
    top = float(hz_to_mel(torch.tensor(4000.0, dtype=torch.float64), scale))
    if scale == "htk":
        to_hz = lambda m: 700 * (10 ** (m / 2595) - 1)  # noqa: E731
    else:
        to_hz = lambda m: m * 200 / 3 if m < 15 else 1000 * math.exp(math.log(6.4) / 27 * (m - 15))  # noqa: E731
    edges = [to_hz(top * i / (n_mels + 1)) for i in range(n_mels + 2)]
    for j in range(n_mels):
        for k in range(n_fft // 2 + 1):
            f = k * sample_rate / n_fft
            left, centre, right = edges[j : j + 3]
            expected = max(0.0, min((f - left) / (centre - left), (right - f) / (right - centre)))
            assert fbank[k, j].item() == pytest.approx(expected, abs=1e-9)
    assert float(hz_to_mel(torch.tensor(1000.0), "slaney")) == pytest.approx(15.0)


def test_log_mel_matches_a_float64_reference():
    adapter = small_spectrogram_adapter(mel_scale="slaney")
    waveform = torch.randn(2, 1000, dtype=torch.float64)
    log_mel, frame_pad = adapter.double().log_mel(waveform)
    for b in range(2):
        expected = reference_log_mel(waveform[b].numpy(), sample_rate=8000, n_fft=64, hop=32, n_mels=8, scale="slaney")
        torch.testing.assert_close(log_mel[b], torch.from_numpy(expected), atol=1e-9, rtol=1e-9)
    assert log_mel.shape == (2, (1000 - 64) // 32 + 1, 8) and not frame_pad.any()


def test_band_normalisation_matches_a_float64_reference_and_removes_a_fixed_filter():
    adapter = small_spectrogram_adapter(mel_scale="slaney", normalize="band").double()
    waveform = torch.randn(1, 1000, dtype=torch.float64)
    log_mel, _ = adapter.log_mel(waveform)
    expected = reference_log_mel(waveform[0].numpy(), sample_rate=8000, n_fft=64, hop=32, n_mels=8, scale="slaney",
                                 band=True)
    torch.testing.assert_close(log_mel[0], torch.from_numpy(expected), atol=1e-9, rtol=1e-9)
    assert log_mel[0].mean(dim=0).abs().max() < 1e-9  # every mel bin centred
    # A microphone's colouring: a fixed gain per mel bin adds a constant to each bin of the log-mel, which "band"
    # removes and one mean per utterance does not. Applied to the mel power directly, so the test needs no filter.
    frontend = adapter.frontend
    colour = torch.linspace(0.2, 5.0, 8, dtype=torch.float64)
    plain = frontend.filterbank.clone()
    frontend.filterbank = plain * colour
    coloured, _ = adapter.log_mel(waveform)
    torch.testing.assert_close(coloured, log_mel, atol=1e-6, rtol=1e-6)
    frontend.normalize = "utterance"
    utterance_coloured, _ = adapter.log_mel(waveform)
    frontend.filterbank = plain
    utterance_plain, _ = adapter.log_mel(waveform)
    assert (utterance_coloured - utterance_plain).abs().max() > 0.1


def test_a_floor_below_the_mean_matches_a_float64_reference_and_reads_any_level_alike():
    adapter = small_spectrogram_adapter(mel_scale="slaney", floor_db=30.0).double()
    speech = torch.randn(1, 1000, dtype=torch.float64) * torch.linspace(0, 1, 1000, dtype=torch.float64) ** 4
    log_mel, _ = adapter.log_mel(speech)
    expected = reference_log_mel(speech[0].numpy(), sample_rate=8000, n_fft=64, hop=32, n_mels=8, scale="slaney",
                                 floor_db=30.0)
    torch.testing.assert_close(log_mel[0], torch.from_numpy(expected), atol=1e-9, rtol=1e-9)
    # A recording 60 dB quieter reads the same: the floor follows the clip's level where an absolute floor does not
    # (the quiet start of this clip sinks under 1e-6 when quieter).
    for level in (1e-3, 1e3):
        torch.testing.assert_close(adapter.log_mel(speech * level)[0], log_mel, atol=1e-9, rtol=1e-9)
    absolute = small_spectrogram_adapter(mel_scale="slaney").double()
    assert (absolute.log_mel(speech * 1e-3)[0] - absolute.log_mel(speech)[0]).abs().max() > 0.1
    # Silence: log_floor, so the log stays finite
    frontend = adapter.frontend
    frontend.normalize = False
    silent, _ = adapter.log_mel(torch.zeros(1, 1000, dtype=torch.float64))
    assert torch.equal(silent, torch.full_like(silent, math.log(1e-6)))
    with pytest.raises(ValueError, match=r"floor_db: expected dB > 0 below the mean mel power .*got 0.0"):
        small_spectrogram_adapter(floor_db=0.0)


@pytest.mark.parametrize("normalize, floor_db", [(True, None), ("band", None), (True, 30.0)])
def test_band_normalised_tokens_do_not_depend_on_padding(normalize, floor_db):
    adapter = small_spectrogram_adapter(normalize=normalize, floor_db=floor_db).double()
    short = torch.randn(1, 750, dtype=torch.float64)
    alone, _ = adapter(short)
    batch = torch.cat([torch.cat([short, torch.full((1, 2250), 5.0, dtype=torch.float64)], 1),
                       torch.randn(1, 3000, dtype=torch.float64)])
    pad_mask = torch.zeros(2, 3000, dtype=torch.bool)
    pad_mask[0, 750:] = True
    padded, _ = adapter(batch, pad_mask)
    torch.testing.assert_close(padded[0, :alone.shape[1]], alone[0], atol=1e-12, rtol=1e-12)


def test_normalize_rejects_unknown_values():
    expected = r"normalize: expected one of \(True, False, 'utterance', 'band'\), got 'bands'"
    with pytest.raises(ValueError, match=expected):
        small_spectrogram_adapter(normalize="bands")


@pytest.mark.parametrize("positions", ["learned", "fourier"])
def test_spectrogram_adapter_shapes_and_gradients(positions):
    adapter = small_spectrogram_adapter(positions=positions)
    tokens, mask = adapter(torch.randn(3, 2000))
    frames = (2000 - 64) // 32 + 1
    assert tokens.shape == (3, math.ceil(frames / 4) * 2, adapter.num_channels) and mask.shape == tokens.shape[:2]
    assert not mask.any()
    assert_trains(adapter, tokens)


def test_spectrogram_tokens_do_not_depend_on_padding():
    adapter = small_spectrogram_adapter()
    # 750 samples make 22 frames: the last time patch holds 2 real frames and 2 that reach into the padding.
    short = torch.randn(1, 750)
    alone, alone_mask = adapter(short)
    batch = torch.zeros(2, 3000)
    batch[0, :750] = short[0]
    batch[0, 750:] = 5.0  # whatever the collation fills in must not leak into the real tokens
    batch[1] = torch.randn(3000)
    pad_mask = torch.zeros(2, 3000, dtype=torch.bool)
    pad_mask[0, 750:] = True
    padded, mask = adapter(batch, pad_mask)
    real = alone.shape[1]
    assert not alone_mask.any() and mask[0, real:].all() and not mask[0, :real].any() and not mask[1].any()
    torch.testing.assert_close(padded[0, :real], alone[0], atol=1e-5, rtol=1e-5)


def test_a_sample_shorter_than_one_frame_is_all_padding():
    adapter = small_spectrogram_adapter()
    pad_mask = torch.zeros(2, 500, dtype=torch.bool)
    pad_mask[0, 40:] = True
    tokens, mask = adapter(torch.randn(2, 500), pad_mask)
    assert mask[0].all() and not mask[1].any() and torch.isfinite(tokens).all()


def test_spectrogram_adapter_errors():
    adapter = small_spectrogram_adapter()
    with pytest.raises(ValueError, match=r"x: expected at least one frame \(T >= n_fft = 64 samples\), got T=50"):
        adapter(torch.zeros(2, 50))
    with pytest.raises(TypeError, match="x: expected a floating-point dtype.*got dtype torch.int16"):
        adapter(torch.zeros(2, 500, dtype=torch.int16))
    with pytest.raises(ValueError, match=r"x: expected a 2-D tensor of shape \(B, T\).*got shape \(2, 1, 500\)"):
        adapter(torch.zeros(2, 1, 500))
    with pytest.raises(ValueError, match="x: expected a non-empty batch"):
        adapter(torch.zeros(0, 500))
    with pytest.raises(ValueError, match="x: expected at most max_duration's 4000 samples, got T=4001"):
        adapter(torch.zeros(1, 4001))
    with pytest.raises(ValueError, match=r"pad_mask: expected shape \(2, 500\) like x, got \(2, 499\)"):
        adapter(torch.zeros(2, 500), torch.zeros(2, 499, dtype=torch.bool))
    leading = torch.zeros(1, 500, dtype=torch.bool)
    leading[0, 0] = True
    with pytest.raises(ValueError, match="pad_mask: expected trailing padding"):
        adapter(torch.zeros(1, 500), leading)
    with pytest.raises(ValueError, match="n_mels: expected a multiple of the mel patch size 4, got 10"):
        small_spectrogram_adapter(n_mels=10)
    with pytest.raises(ValueError, match="mel_scale: expected one of"):
        small_spectrogram_adapter(mel_scale="bark")


# ---------------------------------------------------------------- multimodal


def small_multimodal():
    return MultimodalAdapter(
        adapters={
            "text": ByteAdapter(max_length=32, embed_channels=12),
            "image": PatchAdapter(in_channels=1, max_size=(8, 8), patch_size=4, embed_channels=6, num_bands=2),
            "audio": small_spectrogram_adapter(embed_channels=4, num_bands=1),
        }
    )


def test_multimodal_pads_channels_with_zeros_and_tags_modalities():
    adapter = small_multimodal()
    widths = {name: a.num_channels for name, a in adapter.adapters.items()}
    assert adapter.num_channels == max(widths.values()) == 16
    ids, _ = adapter.adapters["text"].encode(["abc", "de"])
    x = {"text": ids, "image": torch.randn(2, 1, 8, 8), "audio": torch.randn(2, 600)}
    tokens, mask = adapter(x)
    text_tokens, _ = adapter.adapters["text"](ids)
    text_part = tokens[:, : ids.shape[1]]
    embedding = adapter.modality_embedding[0]
    assert widths["text"] == 12
    torch.testing.assert_close(text_part[..., :12], text_tokens + embedding[:12], atol=1e-6, rtol=0)
    torch.testing.assert_close(text_part[..., 12:], embedding[12:].expand(2, ids.shape[1], 4), atol=0, rtol=0)
    start = ids.shape[1]
    assert mask.shape == tokens.shape[:2] and mask[1, 2] and not mask[:, start:].any()
    assert_trains(adapter, tokens)


def test_a_modality_missing_from_the_batch_contributes_no_tokens():
    adapter = small_multimodal()
    ids, _ = adapter.adapters["text"].encode(["abc", "de"])
    image = torch.randn(2, 1, 8, 8)
    tokens, mask = adapter({"text": ids, "image": image})
    assert tokens.shape[1] == ids.shape[1] + 4
    only_text, _ = adapter({"text": ids})
    torch.testing.assert_close(tokens[:, : ids.shape[1]], only_text, atol=0, rtol=0)


def test_a_sample_lacking_a_modality_has_it_masked():
    adapter = small_multimodal()
    ids, _ = adapter.adapters["text"].encode(["abc", "de"])
    x = {"text": ids, "image": torch.zeros(2, 1, 8, 8), "image_present": torch.tensor([False, True])}
    _, mask = adapter(x)
    assert mask[0, 3:].all() and not mask[0, :3].any() and not mask[1, 3:].any()


def test_multimodal_tokens_do_not_depend_on_padding_or_on_a_missing_modality():
    adapter = small_multimodal()
    text = adapter.adapters["text"]
    audio = torch.randn(1, 750)
    alone, alone_mask = adapter({"text": text.encode(["hi"])[0], "audio": audio})
    # In the batch, the other sample has longer text and audio, and an image the first sample lacks.
    audio_batch = torch.zeros(2, 2000)
    audio_batch[0, :750] = audio[0]
    audio_batch[1] = torch.randn(2000)
    audio_mask = torch.zeros(2, 2000, dtype=torch.bool)
    audio_mask[0, 750:] = True
    x = {
        "text": text.encode(["hi", "a longer one"])[0],
        "image": torch.randn(2, 1, 8, 8),
        "image_present": torch.tensor([False, True]),
        "audio": audio_batch,
    }
    tokens, mask = adapter(x, {"audio": audio_mask})
    real = tokens[0][~mask[0]]
    torch.testing.assert_close(real, alone[0][~alone_mask[0]], atol=1e-5, rtol=1e-5)


def test_multimodal_errors():
    adapter = small_multimodal()
    ids, _ = adapter.adapters["text"].encode(["abc", "de"])
    with pytest.raises(ValueError, match=r"x: expected keys among .*got unknown \['video'\]"):
        adapter({"text": ids, "video": ids})
    with pytest.raises(ValueError, match="x: expected at least one of the modalities"):
        adapter({"image_present": torch.ones(2, dtype=torch.bool)})
    with pytest.raises(TypeError, match="x: expected a dict"):
        adapter(ids)
    with pytest.raises(ValueError, match=r"x\['image'\]: expected batch size 2 like the modalities before, got 3"):
        adapter({"text": ids, "image": torch.zeros(3, 1, 8, 8)})
    with pytest.raises(TypeError, match=r"x\['image_present'\]: expected a torch.bool tensor \(2,\), got torch.int64"):
        adapter({"text": ids, "image": torch.zeros(2, 1, 8, 8), "image_present": torch.ones(2, dtype=torch.long)})
    with pytest.raises(ValueError, match=r"x\['image_present'\]: expected shape \(2,\), got \(3,\)"):
        adapter({"text": ids, "image": torch.zeros(2, 1, 8, 8), "image_present": torch.ones(3, dtype=torch.bool)})
    with pytest.raises(ValueError, match=r"pad_masks: expected keys among .*got unknown \['video'\]"):
        adapter({"text": ids}, {"video": None})
    with pytest.raises(ValueError, match="num_channels: expected at least the widest adapter's 16, got 8"):
        MultimodalAdapter(adapters={"text": ByteAdapter(embed_channels=16)}, num_channels=8)


def test_multimodal_takes_pad_masks_and_its_former_name_pad_mask():
    adapter = small_multimodal()
    ids, text_mask = adapter.adapters["text"].encode(["abc", "de"])
    x = {"text": ids, "image": torch.zeros(2, 1, 8, 8)}
    tokens, mask = adapter(x, pad_masks={"text": text_mask})
    old_tokens, old_mask = adapter(x, pad_mask={"text": text_mask})
    assert torch.equal(tokens, old_tokens) and torch.equal(mask, old_mask)
    with pytest.raises(TypeError, match="pad_masks, pad_mask: expected one of them"):
        adapter(x, {"text": text_mask}, pad_mask={"text": text_mask})


def test_one_presence_flag_parser_for_the_adapter_and_the_fusion_modules():
    from perceiver.adapters.multimodal import presence_flag
    from perceiver.fusion import modality_presence

    x = {"a": torch.zeros(3, 2), "b": torch.zeros(3, 2), "b_present": torch.tensor([True, False, True])}
    assert presence_flag(x, "a", 3) is None and torch.equal(presence_flag(x, "b", 3), x["b_present"])
    assert modality_presence(x, ["a", "b"], 3, torch.device("cpu")).tolist() == [[True, True], [True, False],
                                                                                  [True, True]]
    for bad, error in ((torch.tensor([1, 0, 1]), TypeError), (torch.tensor([True]), ValueError)):
        with pytest.raises(error, match=r"x\['b_present'\]"):
            presence_flag({**x, "b_present": bad}, "b", 3)
        with pytest.raises(error, match=r"x\['b_present'\]"):
            modality_presence({**x, "b_present": bad}, ["a", "b"], 3, torch.device("cpu"))
