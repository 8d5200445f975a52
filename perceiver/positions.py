"""Position encodings shared by every adapter and query provider.

Both encodings live on a fixed grid of ``max_shape`` cells (e.g. ``(2048,)`` bytes, ``(14, 14)`` image patches,
``(63, 4)`` time-frequency patches). A smaller input uses the top-left corner of that grid: cell ``i`` along a
dimension always gets the same encoding, however long the rest of the batch is. That is what makes every adapter
padding-invariant: padding a sample never moves the position of one of its real tokens.

- ``FourierPositionEncoding``: the Fourier features of the Perceiver papers. A position ``p`` in [-1, 1] per
  dimension (cell ``i`` of ``n`` maps to ``-1 + 2 i / (n - 1)``) is encoded, for ``K`` frequencies ``f_k``
  linearly spaced from 1 to ``max_resolution / 2`` (the Nyquist frequency of that dimension), as
  ``[p, sin(pi f_k p), cos(pi f_k p)]``. Channel order: the raw positions (``d``), then all sines, then all cosines,
  each dimension-major (``d * K``). It also encodes arbitrary positions (..., d), e.g. subsampled output points.
- ``LearnedPositionEncoding``: one learned vector per grid cell.
- ``RotaryEmbedding``: rotary positions (Su et al., 2021) for 1-D sequences, applied to query and key heads rather
  than to tokens, so that attention scores depend on relative positions only (Perceiver AR).

Both implement ``at_index(flat_index)`` (row-major index into the ``max_shape`` grid) and ``grid(shape)``.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import Tensor, nn

from perceiver.config import Pretrained, capture_config

POSITION_KINDS = ("fourier", "learned")


def as_shape(value: int | Sequence[int], name: str) -> tuple[int, ...]:
    """A shape given as an int or a sequence of positive ints, as a tuple."""
    shape = (value,) if isinstance(value, int) else tuple(value)
    if not shape or not all(isinstance(n, int) and n > 0 for n in shape):
        raise ValueError(f"{name}: expected a positive int or a non-empty sequence of positive ints, got {value!r}")
    return shape


class PositionEncoding(Pretrained, nn.Module):
    """Encodes the cells of a ``max_shape`` grid as ``num_channels`` features.

    Subclasses set ``max_shape`` and ``num_channels`` and define ``encode_index(index)`` for valid flat indices.
    """

    max_shape: tuple[int, ...]
    num_channels: int

    def at_index(self, index: Tensor) -> Tensor:
        """Encodings (..., num_channels) of flat row-major cell indices (...) of the ``max_shape`` grid."""
        self.check_index(index)
        return self.encode_index(index)

    def grid_index(self, shape: Sequence[int], device=None) -> Tensor:
        """Flat indices (prod(shape),) of the top-left ``shape`` corner of the grid, row-major."""
        shape = tuple(int(n) for n in shape)
        if len(shape) != len(self.max_shape) or any(n < 1 or n > m for n, m in zip(shape, self.max_shape)):
            raise ValueError(
                f"shape: expected {len(self.max_shape)} sizes, each between 1 and max_shape={self.max_shape}, "
                f"got {shape}"
            )
        axes = [torch.arange(n, device=device) for n in shape]
        cells = torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1).reshape(-1, len(shape))
        strides = [math.prod(self.max_shape[d + 1 :]) for d in range(len(shape))]
        return (cells * torch.tensor(strides, device=device)).sum(-1)

    def grid(self, shape: Sequence[int], device=None, dtype: torch.dtype | None = None) -> Tensor:
        """Encodings (prod(shape), num_channels) of the top-left ``shape`` corner of the grid, row-major.

        ``dtype``: the precision in which computed encodings (Fourier features) are computed, float32 by default;
        learned encodings are returned as stored.
        """
        # grid_index is valid by construction, so skip at_index's range check (it would sync a GPU).
        return self.encode_index(self.grid_index(shape, device=device))

    def check_index(self, index: Tensor, name: str = "index") -> None:
        if not isinstance(index, Tensor) or index.dtype not in (torch.int32, torch.int64):
            got = index.dtype if isinstance(index, Tensor) else type(index).__name__
            raise TypeError(f"{name}: expected an integer tensor of flat grid positions, got {got}")
        size = math.prod(self.max_shape)
        if index.numel() and (int(index.min()) < 0 or int(index.max()) >= size):
            raise ValueError(
                f"{name}: expected flat positions in [0, {size}) of the grid {self.max_shape}, "
                f"got values in [{int(index.min())}, {int(index.max())}]"
            )


class FourierPositionEncoding(PositionEncoding):
    """Fourier features of N-dimensional positions (see the module docstring for the formula and channel order).

    Args:
        max_shape: the grid whose cells ``grid``/``at_index`` encode; its dimension count is the position's.
        num_bands: frequency bands per dimension.
        max_resolution: per-dimension resolution whose Nyquist frequency is the highest band; defaults to
            ``max_shape``.
        include_positions: concatenate the raw positions in front of the sines and cosines.
    """

    def __init__(
        self,
        *,
        max_shape: int | Sequence[int],
        num_bands: int = 32,
        max_resolution: int | Sequence[int] | None = None,
        include_positions: bool = True,
    ):
        super().__init__()
        self.config = capture_config(locals())
        self.max_shape = as_shape(max_shape, "max_shape")
        resolution = self.max_shape if max_resolution is None else as_shape(max_resolution, "max_resolution")
        if len(resolution) != len(self.max_shape):
            raise ValueError(
                f"max_resolution: expected {len(self.max_shape)} values (one per dimension of max_shape), "
                f"got {resolution}"
            )
        if num_bands < 1:
            raise ValueError(f"num_bands: expected a positive int, got {num_bands}")
        self.num_dims = len(self.max_shape)
        self.num_bands = num_bands
        self.include_positions = include_positions
        self.max_resolution = resolution

    def frequencies(self, dtype: torch.dtype, device) -> Tensor:
        """(d, K): band k of dimension d, linearly spaced from 1 to that dimension's Nyquist frequency.

        Built per call in the positions' dtype (a few dozen numbers), so that no module-wide dtype cast such as
        ``.half()`` can coarsen them.
        """
        return torch.stack(
            [torch.linspace(1.0, r / 2, self.num_bands, dtype=dtype, device=device) for r in self.max_resolution]
        )

    @property
    def num_channels(self) -> int:
        return self.num_dims * (2 * self.num_bands + int(self.include_positions))

    def forward(self, positions: Tensor) -> Tensor:
        """Features (..., num_channels) of positions (..., d) in [-1, 1] (e.g. (B, M, d) or (M, d))."""
        if not isinstance(positions, Tensor) or not positions.is_floating_point():
            got = positions.dtype if isinstance(positions, Tensor) else type(positions).__name__
            raise TypeError(f"positions: expected a float tensor (..., {self.num_dims}), got {got}")
        if positions.dim() < 1 or positions.shape[-1] != self.num_dims:
            raise ValueError(f"positions: expected shape (..., {self.num_dims}), got {tuple(positions.shape)}")
        frequencies = self.frequencies(positions.dtype, positions.device)
        phases = (math.pi * positions[..., :, None] * frequencies).flatten(-2)  # (..., d * K), dimension-major
        parts = [positions] if self.include_positions else []
        return torch.cat(parts + [torch.sin(phases), torch.cos(phases)], dim=-1)

    def index_to_positions(self, index: Tensor, dtype: torch.dtype = torch.float32) -> Tensor:
        """Positions (..., d) in [-1, 1] of flat row-major cell indices (...) of the ``max_shape`` grid."""
        cells = torch.stack(torch.unravel_index(index, self.max_shape), dim=-1).to(dtype)
        # A dimension of size 1 has the single position -1, as torch.linspace(-1, 1, 1) would give.
        spans = torch.tensor([max(n - 1, 1) for n in self.max_shape], dtype=dtype, device=index.device)
        return 2 * cells / spans - 1

    def encode_index(self, index: Tensor) -> Tensor:
        return self.forward(self.index_to_positions(index))

    def grid(self, shape: Sequence[int], device=None, dtype: torch.dtype | None = None) -> Tensor:
        index = self.grid_index(shape, device=device)
        return self.forward(self.index_to_positions(index, dtype=torch.float32 if dtype is None else dtype))


class LearnedPositionEncoding(PositionEncoding):
    """One learned ``num_channels`` vector per cell of a ``max_shape`` grid (initialised N(0, init_scale²))."""

    def __init__(self, *, max_shape: int | Sequence[int], num_channels: int, init_scale: float = 0.02):
        super().__init__()
        self.config = capture_config(locals())
        self.max_shape = as_shape(max_shape, "max_shape")
        if num_channels < 1:
            raise ValueError(f"num_channels: expected a positive int, got {num_channels}")
        self.num_channels = num_channels
        self.table = nn.Parameter(torch.randn(math.prod(self.max_shape), num_channels) * init_scale)

    def encode_index(self, index: Tensor) -> Tensor:
        return self.table[index]

    def forward(self, index: Tensor) -> Tensor:
        """Same as ``at_index``."""
        return self.at_index(index)


class RotaryEmbedding(Pretrained, nn.Module):
    """Rotates the first ``num_channels`` channels of each query or key head by angles proportional to its position.

    Channel pair (c, c + num_channels / 2) of a head at position p turns by p · base^(-2c / num_channels), so that the
    product of a rotated query at p and a rotated key at p' depends on p - p' only. Channels beyond ``num_channels``
    pass unchanged. The angles are computed in float64 for float64 heads and in float32 otherwise.
    """

    def __init__(self, *, num_channels: int, base: float = 10000.0):
        super().__init__()
        self.config = capture_config(locals())
        if not (isinstance(num_channels, int) and num_channels > 0 and num_channels % 2 == 0):
            raise ValueError(f"num_channels: expected a positive even int, got {num_channels!r}")
        if not base > 1:
            raise ValueError(f"base: expected a float > 1, got {base!r}")
        self.num_channels = num_channels
        self.base = base

    def forward(self, x: Tensor, positions: Tensor) -> Tensor:
        """Heads ``x`` (B, H, L, D) with D >= num_channels, rotated by ``positions`` (B, L) or (L,) (integers)."""
        if x.dim() != 4 or x.shape[-1] < self.num_channels:
            raise ValueError(f"x: expected heads (B, H, L, D >= {self.num_channels}), got shape {tuple(x.shape)}")
        if positions.shape[-1] != x.shape[2] or positions.dim() not in (1, 2):
            raise ValueError(f"positions: expected shape (B, {x.shape[2]}) or ({x.shape[2]},), got {tuple(positions.shape)}")
        return self.rotate(x, self.angles(positions, x.dtype))

    def angles(self, positions: Tensor, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
        """cos and sin (L, num_channels / 2) or (B, 1, L, num_channels / 2) of ``positions``, to rotate heads of
        ``dtype`` with ``rotate`` (compute them once for all the layers that share positions)."""
        precision = torch.float64 if dtype == torch.float64 else torch.float32
        half = self.num_channels // 2
        frequencies = self.base ** (-torch.arange(half, dtype=precision, device=positions.device) / half)
        angles = positions.to(precision)[..., None] * frequencies
        if angles.dim() == 3:
            angles = angles[:, None]  # (B, 1, L, half): every head turns alike
        return angles.cos().to(dtype), angles.sin().to(dtype)

    def rotate(self, x: Tensor, angles: tuple[Tensor, Tensor]) -> Tensor:
        """Heads ``x`` (B, H, L, D) rotated by the ``angles`` of their positions."""
        cos, sin = angles
        half = self.num_channels // 2
        x1, x2 = x[..., :half], x[..., half : self.num_channels]
        rotated = [x1 * cos - x2 * sin, x1 * sin + x2 * cos]
        if x.shape[-1] > self.num_channels:
            rotated.append(x[..., self.num_channels :])
        return torch.cat(rotated, dim=-1)


def build_position_encoding(
    kind: str,
    *,
    max_shape: int | Sequence[int],
    num_channels: int,
    num_bands: int = 32,
    max_resolution: int | Sequence[int] | None = None,
) -> PositionEncoding:
    """``"fourier"`` (``num_channels`` is then ignored: the formula fixes it) or ``"learned"`` positions."""
    if kind == "fourier":
        return FourierPositionEncoding(max_shape=max_shape, num_bands=num_bands, max_resolution=max_resolution)
    if kind == "learned":
        return LearnedPositionEncoding(max_shape=max_shape, num_channels=num_channels)
    raise ValueError(f"positions: expected one of {POSITION_KINDS}, got {kind!r}")


def with_positions(tokens: Tensor, encoding: PositionEncoding, grid: Sequence[int]) -> Tensor:
    """Tokens (B, M, C) of the top-left ``grid`` cells (row-major, M = prod(grid)) with their positions.

    Fourier features are concatenated (``C + encoding.num_channels`` channels), computed in float64 for float64 tokens
    (phases reach pi · max_resolution / 2) and in float32 otherwise; learned positions are added.
    """
    if isinstance(encoding, FourierPositionEncoding):
        precision = torch.float64 if tokens.dtype == torch.float64 else torch.float32
        positions = encoding.grid(grid, device=tokens.device, dtype=precision).to(tokens.dtype)
        return torch.cat([tokens, positions.expand(tokens.shape[0], -1, -1)], dim=-1)
    return tokens + encoding.grid(grid, device=tokens.device).to(tokens.dtype)
