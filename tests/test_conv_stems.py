"""Convolutional stems: shapes, masks, padding invariance in float64, clear errors."""

import json

import pytest
import torch

from perceiver import build_module, module_spec
from perceiver.adapters import ConvAdapter, ConvStem, SpectrogramConvAdapter
from perceiver.adapters.conv import downsample_valid


def image_adapter(**overrides):
    kwargs = dict(in_channels=2, max_size=(16, 16), channels=(4, 6, 8), strides=(1, 2, 2), num_bands=3)
    return ConvAdapter(**{**kwargs, **overrides})


def spectrogram_adapter(**overrides):
    kwargs = dict(sample_rate=8000, n_fft=64, hop_length=32, n_mels=8, max_duration=0.5, channels=(6, 8),
                  strides=(1, 2), num_bands=3)
    return SpectrogramConvAdapter(**{**kwargs, **overrides})


@pytest.mark.parametrize("positions", ["fourier", "learned"])
def test_image_tokens_are_cells_of_the_strided_feature_map(positions):
    adapter = image_adapter(positions=positions)
    tokens, pad_mask = adapter(torch.randn(3, 2, 12, 8))
    fourier = 2 * (2 * 3 + 1)  # per dimension: the position, 3 sines, 3 cosines
    assert adapter.num_channels == 8 + (fourier if positions == "fourier" else 0)
    assert tokens.shape == (3, (12 // 4) * (8 // 4), adapter.num_channels) and pad_mask is None
    tokens.square().mean().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in adapter.stem.parameters())


def test_one_dimensional_signals():
    adapter = ConvAdapter(in_channels=3, max_size=(32,), channels=(5, 7), strides=(2, 2), num_bands=2)
    tokens, pad_mask = adapter(torch.randn(2, 3, 20), torch.arange(20) >= torch.tensor([[20], [9]]))
    assert tokens.shape == (2, 5, 7 + 5) and pad_mask.tolist() == [[False] * 5, [False, False, False, True, True]]


def test_validity_downsamples_to_any_real_element_of_a_stride_cell():
    valid = torch.tensor([[1, 1, 1, 0, 0], [0, 0, 0, 0, 1]], dtype=torch.bool)
    assert downsample_valid(valid, 2).tolist() == [[True, True, False], [False, False, True]]
    assert torch.equal(downsample_valid(valid, 1), valid)


@pytest.mark.parametrize("positions, downsample", [("fourier", "stride"), ("learned", "stride"), ("fourier", "pool")])
def test_image_tokens_do_not_depend_on_padding_float64(positions, downsample):
    torch.manual_seed(0)
    adapter = image_adapter(positions=positions, downsample=downsample).double()
    small = torch.randn(1, 2, 8, 12, dtype=torch.float64)
    alone, alone_mask = adapter(small)
    batch = torch.randn(2, 2, 16, 16, dtype=torch.float64)
    batch[0, :, :8, :12] = small[0]
    batch[0, :, 8:, :] = float("nan")  # padding may hold anything, NaN included
    batch[0, :, :, 12:] = float("inf")
    pad_mask = torch.zeros(2, 16, 16, dtype=torch.bool)
    pad_mask[0, 8:, :] = True
    pad_mask[0, :, 12:] = True
    tokens, token_mask = adapter(batch, pad_mask)
    grid = token_mask[0].reshape(4, 4)
    assert grid[:2, :3].logical_not().all() and grid[2:].all() and grid[:, 3:].all() and not token_mask[1].any()
    real = tokens[0].reshape(4, 4, -1)[:2, :3].reshape(6, -1)
    assert alone_mask is None and torch.isfinite(tokens).all()
    torch.testing.assert_close(real, alone[0], rtol=0, atol=1e-12)


@pytest.mark.parametrize("conv, downsample", [("time", "stride"), ("time-mel", "stride"), ("time-mel-frames", "stride"),
                                               ("time", "pool"), ("time-mel", "pool"), ("time-mel-frames", "pool")])
def test_spectrogram_tokens_do_not_depend_on_padding_float64(conv, downsample):
    torch.manual_seed(0)
    adapter = spectrogram_adapter(conv=conv, downsample=downsample).double()
    short = torch.randn(1, 1032, dtype=torch.float64)
    alone, alone_mask = adapter(short)
    # An odd number of frames: the last stride-2 cell holds one real frame and, in the batch, one padded frame.
    assert adapter.frontend(short)[0].shape[1] % 2 == 1
    batch = torch.randn(2, 3000, dtype=torch.float64)
    batch[0, :1032] = short[0]
    batch[0, 1032:] = float("nan")
    pad_mask = torch.arange(3000)[None, :] >= torch.tensor([[1032], [3000]])
    tokens, token_mask = adapter(batch, pad_mask)
    real = ~token_mask[0]
    assert not alone_mask.any() and int(real.sum()) == alone.shape[1] and not token_mask[1].any()
    assert torch.isfinite(tokens).all()
    torch.testing.assert_close(tokens[0, real], alone[0], rtol=0, atol=1e-10)


def test_spectrogram_conv_shapes():
    frames = (4000 - 64) // 32 + 1  # 124 frames in 0.5 s
    time_adapter = spectrogram_adapter()
    tokens, pad_mask = time_adapter(torch.randn(2, 4000))
    assert tokens.shape == (2, frames // 2, 8 + 1 * (2 * 3 + 1)) and pad_mask.shape == (2, frames // 2)
    grid_adapter = spectrogram_adapter(conv="time-mel")
    tokens, pad_mask = grid_adapter(torch.randn(2, 4000))
    assert tokens.shape == (2, (frames // 2) * (8 // 2), 8 + 2 * (2 * 3 + 1))
    frames_adapter = spectrogram_adapter(conv="time-mel-frames")
    tokens, pad_mask = frames_adapter(torch.randn(2, 4000))
    assert tokens.shape == (2, frames // 2, 8 * (8 // 2) + 1 * (2 * 3 + 1)) and pad_mask.shape == (2, frames // 2)


def test_time_mel_frames_stack_each_frames_mel_cells_float64():
    """A token of ``conv="time-mel-frames"`` is its frame's features in every mel cell, channel-major, then the
    Fourier features of the frame's time cell: the grid of ``conv="time-mel"`` regrouped by frame."""
    torch.manual_seed(0)
    frames_adapter = spectrogram_adapter(conv="time-mel-frames").double()
    grid_adapter = spectrogram_adapter(conv="time-mel").double()
    grid_adapter.stem.load_state_dict(frames_adapter.stem.state_dict())
    x = torch.randn(2, 3000, dtype=torch.float64)
    pad_mask = torch.arange(3000)[None, :] >= torch.tensor([[1500], [3000]])
    tokens, token_mask = frames_adapter(x, pad_mask)
    grid_tokens, grid_mask = grid_adapter(x, pad_mask)
    mel_cells, channels = 4, 8
    cells = grid_tokens[..., :channels].reshape(2, -1, mel_cells, channels)  # (B, time cells, mel cells, C)
    torch.testing.assert_close(tokens[..., :channels * mel_cells], cells.transpose(2, 3).flatten(2), rtol=0, atol=0)
    assert torch.equal(token_mask, grid_mask.reshape(2, -1, mel_cells)[..., 0])
    positions = frames_adapter.positions.grid((tokens.shape[1],), dtype=torch.float64)
    assert positions.shape == (tokens.shape[1], 1 * (2 * 3 + 1))  # the time axis only
    torch.testing.assert_close(tokens[..., channels * mel_cells:], positions.expand(2, -1, -1), rtol=0, atol=0)


def test_pooled_stem_is_convolution_norm_gelu_then_max_pool_float64():
    torch.manual_seed(0)
    stem = ConvStem(num_dims=2, in_channels=2, channels=(4, 6), strides=(2, 1), downsample="pool").double()
    x = torch.randn(3, 2, 10, 6, dtype=torch.float64)
    expected = x
    for conv, stride in zip(stem.convs, (2, 1)):
        expected = torch.nn.functional.conv2d(expected, conv.weight, conv.bias, padding=1)
        mean = expected.mean(1, keepdim=True)
        normed = (expected - mean) / (expected.var(1, unbiased=False, keepdim=True) + 1e-5).sqrt()
        expected = torch.nn.functional.gelu(normed)  # the norms start at weight 1, bias 0
        if stride > 1:
            expected = torch.nn.functional.max_pool2d(expected, stride)
    features, valid = stem(x)
    assert features.shape == (3, 6, 5, 3) and valid is None
    torch.testing.assert_close(features, expected, rtol=0, atol=1e-12)


def test_conv_adapters_round_trip_through_their_config():
    for adapter in (image_adapter(), image_adapter(downsample="pool"), spectrogram_adapter(conv="time-mel"),
                    spectrogram_adapter(conv="time-mel-frames")):
        rebuilt = build_module(json.loads(json.dumps(module_spec(adapter))))
        rebuilt.load_state_dict(adapter.state_dict())
        x = torch.randn(2, 2, 16, 16) if isinstance(adapter, ConvAdapter) else torch.randn(2, 4000)
        torch.testing.assert_close(rebuilt(x)[0], adapter(x)[0])


def test_conv_adapter_errors():
    adapter = image_adapter()
    with pytest.raises(ValueError, match=r"H=10 .* total stride 4; nearest valid sizes: \[8, 12\]"):
        adapter(torch.randn(1, 2, 10, 8))
    with pytest.raises(ValueError, match="exceeds max_size"):
        adapter(torch.randn(1, 2, 20, 8))
    with pytest.raises(ValueError, match=r"expected 2 channels"):
        adapter(torch.randn(1, 3, 8, 8))
    with pytest.raises(TypeError, match="floating-point"):
        adapter(torch.ones(1, 2, 8, 8, dtype=torch.long))
    with pytest.raises(TypeError, match="pad_mask: expected dtype torch.bool"):
        adapter(torch.randn(1, 2, 8, 8), torch.zeros(1, 8, 8))
    with pytest.raises(ValueError, match=r"pad_mask: expected shape \(1, 8, 8\)"):
        adapter(torch.randn(1, 2, 8, 8), torch.zeros(1, 8, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="max_size: expected sizes divisible by the total stride 4"):
        image_adapter(max_size=(18, 16))
    with pytest.raises(ValueError, match="channels, strides: expected two non-empty sequences of one length"):
        ConvStem(num_dims=2, in_channels=1, channels=(4, 8), strides=(2,))
    with pytest.raises(ValueError, match="kernel_size: expected an odd"):
        ConvStem(num_dims=2, in_channels=1, channels=(4,), strides=(2,), kernel_size=4)
    with pytest.raises(ValueError, match=r"downsample: expected one of \('stride', 'pool'\), got 'avg'"):
        ConvStem(num_dims=2, in_channels=1, channels=(4,), strides=(2,), downsample="avg")
    with pytest.raises(ValueError, match="conv: expected one of"):
        spectrogram_adapter(conv="mel")
