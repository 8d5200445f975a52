import math

import pytest
import torch

from perceiver.positions import FourierPositionEncoding, LearnedPositionEncoding, build_position_encoding


def fourier_reference(position: list[float], num_bands: int, resolution: list[int], include_positions=True):
    """The Perceiver's Fourier features of one position, written out in float64 Python."""
    sines, cosines = [], []
    for p, r in zip(position, resolution):
        for k in range(num_bands):
            frequency = 1 + k * (r / 2 - 1) / (num_bands - 1)
            sines.append(math.sin(math.pi * frequency * p))
            cosines.append(math.cos(math.pi * frequency * p))
    return (list(position) if include_positions else []) + sines + cosines


def test_fourier_grid_matches_the_formula():
    encoding = FourierPositionEncoding(max_shape=(3, 5), num_bands=4)
    features = encoding.grid((3, 5)).double()
    expected = [fourier_reference([-1 + 2 * i / 2, -1 + 2 * j / 4], 4, [3, 5]) for i in range(3) for j in range(5)]
    assert encoding.num_channels == 2 * (2 * 4 + 1) == features.shape[1]
    torch.testing.assert_close(features, torch.tensor(expected, dtype=torch.float64), atol=1e-5, rtol=0)


def test_fourier_arbitrary_positions_match_the_formula_in_float64():
    encoding = FourierPositionEncoding(max_shape=(8, 8), num_bands=6, max_resolution=(32, 16), include_positions=False)
    positions = torch.rand(2, 7, 2, dtype=torch.float64) * 2 - 1
    features = encoding(positions)
    expected = [
        [fourier_reference(p, 6, [32, 16], include_positions=False) for p in sample] for sample in positions.tolist()
    ]
    assert features.shape == (2, 7, encoding.num_channels) and encoding.num_channels == 2 * 2 * 6
    torch.testing.assert_close(features, torch.tensor(expected, dtype=torch.float64), atol=1e-12, rtol=0)


def test_a_smaller_grid_keeps_the_positions_of_the_full_grid():
    for encoding in (
        FourierPositionEncoding(max_shape=(4, 6), num_bands=3),
        LearnedPositionEncoding(max_shape=(4, 6), num_channels=5),
    ):
        full = encoding.grid((4, 6)).reshape(4, 6, -1)
        corner = encoding.grid((2, 3)).reshape(2, 3, -1)
        torch.testing.assert_close(corner, full[:2, :3], atol=0, rtol=0)
        index = torch.tensor([[0, 23], [7, 11]])
        torch.testing.assert_close(encoding.at_index(index), full.reshape(24, -1)[index], atol=0, rtol=0)


def test_learned_positions_get_gradients():
    encoding = build_position_encoding("learned", max_shape=10, num_channels=4)
    encoding.grid((6,)).sum().backward()
    assert encoding.table.grad[:6].eq(1).all() and encoding.table.grad[6:].eq(0).all()


def test_one_dimensional_fourier_channel_count():
    encoding = build_position_encoding("fourier", max_shape=100, num_channels=0, num_bands=16)
    assert encoding.num_channels == 2 * 16 + 1
    assert encoding.grid((100,))[:, 0].tolist() == pytest.approx(torch.linspace(-1, 1, 100).tolist(), abs=1e-6)


def test_position_errors_name_the_argument():
    encoding = FourierPositionEncoding(max_shape=(4, 4), num_bands=2)
    with pytest.raises(ValueError, match=r"shape: expected 2 sizes.*max_shape=\(4, 4\), got \(5, 4\)"):
        encoding.grid((5, 4))
    with pytest.raises(ValueError, match=r"index: expected flat positions in \[0, 16\)"):
        encoding.at_index(torch.tensor([16]))
    with pytest.raises(TypeError, match="index: expected an integer tensor"):
        encoding.at_index(torch.tensor([1.0]))
    with pytest.raises(ValueError, match=r"positions: expected shape \(\.\.\., 2\), got \(3, 3\)"):
        encoding(torch.zeros(3, 3))
    with pytest.raises(ValueError, match="positions: expected one of"):
        build_position_encoding("sinusoidal", max_shape=4, num_channels=4)
    with pytest.raises(ValueError, match="max_resolution: expected 2 values"):
        FourierPositionEncoding(max_shape=(4, 4), max_resolution=(4,))
