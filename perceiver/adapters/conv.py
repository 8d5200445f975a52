"""Convolutional stems: a few small convolutions in front of the Perceiver, for images and 1-D signals.

Attention over raw patches must learn local structure (edges, strokes, formants) from scratch; a few 3×3
convolutions build it in, which is why the Perceiver IO paper's conv preprocessing beats its Fourier pixels on ImageNet
and why Whisper and Conformer run convolutions before attention. ``ConvStem`` is the stack; ``ConvAdapter`` turns its
feature map into tokens with positions, with the same pad-mask semantics as ``PatchAdapter``.

Padding: every convolution sees zeros where the input is padding (set with ``torch.where`` before each layer, so that
a NaN or inf under the mask cannot leak), exactly what it sees beyond the edge of a sample that is alone. The
normalisation is a LayerNorm over channels at each position, never over the batch or over positions. So a sample's
real tokens are the same alone or padded in a batch.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from perceiver.adapters.base import InputAdapter
from perceiver.adapters.checks import check_model_dtype, check_tensor
from perceiver.adapters.patches import nearest_multiples
from perceiver.config import Pretrained, capture_config
from perceiver.masks import check_pad_mask
from perceiver.positions import as_shape, build_position_encoding, with_positions

_CONV = {1: nn.Conv1d, 2: nn.Conv2d}
_POOL = {1: F.max_pool1d, 2: F.max_pool2d}
_LAYOUTS = {1: "(B, C, T)", 2: "(B, C, H, W)"}
DOWNSAMPLING = ("stride", "pool")


def downsample_valid(valid: Tensor, stride: int) -> Tensor:
    """Validity (B, *S) after a stride-``stride`` convolution: an output cell is real if any input of its cell is."""
    if stride == 1:
        return valid
    pool = _POOL[valid.dim() - 1]
    return pool(valid[:, None].float(), stride, stride, ceil_mode=True)[:, 0] > 0


class ConvStem(Pretrained, nn.Module):
    """``len(channels)`` layers of (3×3 or 3-tap) convolution → LayerNorm over channels → GELU.

    Layer ``i`` has ``channels[i]`` output channels and downsamples by ``strides[i]``; padding keeps
    ``ceil(size / stride)`` cells. ``downsample="stride"`` strides the convolution; ``"pool"`` runs it at stride 1 and
    max-pools by the stride after the GELU, as a classic CNN does. Works on (B, C, T) (``num_dims=1``) or
    (B, C, H, W) (``num_dims=2``).
    """

    def __init__(self, *, num_dims: int, in_channels: int, channels: Sequence[int], strides: Sequence[int],
                 kernel_size: int = 3, downsample: str = "stride"):
        super().__init__()
        self.config = capture_config(locals())
        if num_dims not in _CONV:
            raise ValueError(f"num_dims: expected 1 or 2, got {num_dims}")
        if not channels or len(channels) != len(strides):
            raise ValueError(f"channels, strides: expected two non-empty sequences of one length, got {list(channels)} "
                             f"and {list(strides)}")
        if any(c < 1 for c in channels) or any(s < 1 for s in strides):
            raise ValueError(f"channels, strides: expected positive ints, got {list(channels)} and {list(strides)}")
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"kernel_size: expected an odd positive int, got {kernel_size}")
        if downsample not in DOWNSAMPLING:
            raise ValueError(f"downsample: expected one of {DOWNSAMPLING}, got {downsample!r}")
        self.num_dims = num_dims
        self.strides = tuple(strides)
        self.total_stride = math.prod(strides)
        self.pool = downsample == "pool"
        widths = [in_channels, *channels]
        self.convs = nn.ModuleList(
            _CONV[num_dims](c_in, c_out, kernel_size, stride=1 if self.pool else s, padding=kernel_size // 2)
            for c_in, c_out, s in zip(widths[:-1], widths[1:], strides)
        )
        self.norms = nn.ModuleList(nn.LayerNorm(c) for c in channels)
        self.num_channels = channels[-1]

    def forward(self, x: Tensor, valid: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
        """Features (B, C', *S') and their validity (B, *S') (True = real), from x (B, C, *S) and valid (B, *S)."""
        for conv, norm, stride in zip(self.convs, self.norms, self.strides):
            if valid is not None:
                x = torch.where(valid[:, None], x, torch.zeros((), dtype=x.dtype, device=x.device))
            x = F.gelu(norm(conv(x).movedim(1, -1))).movedim(-1, 1)
            if self.pool and stride > 1:
                x = self.max_pool(x, valid, stride)
            if valid is not None:
                valid = downsample_valid(valid, stride)
        if valid is not None:
            x = torch.where(valid[:, None], x, torch.zeros((), dtype=x.dtype, device=x.device))
        return x, valid

    def max_pool(self, x: Tensor, valid: Tensor | None, stride: int) -> Tensor:
        """Max over each stride cell of its real elements: padding enters as -inf, as the pool treats the cells past
        a lone sample's edge (ceil_mode), so a cell that straddles a sample's end pools the same alone or padded."""
        if valid is not None:
            x = torch.where(valid[:, None], x, torch.full((), -math.inf, dtype=x.dtype, device=x.device))
        return _POOL[self.num_dims](x, stride, stride, ceil_mode=True)


class ConvAdapter(InputAdapter):
    """Images (B, C, H, W) or 1-D signals (B, C, T) → ``ConvStem`` → one token per cell of its feature map.

    ``max_size`` gives the spatial rank, ``(H, W)`` or ``(T,)``. Inputs may be any size up to ``max_size`` that
    divides by the stem's total stride (the product of ``strides``); a token's position is its absolute cell of the
    ``max_size / total stride`` grid, so padding never moves a real token. Positions are Fourier features
    (concatenated: ``num_channels = channels[-1] + Fourier channels``) or learned (added:
    ``num_channels = channels[-1]``).

    ``pad_mask`` is at input resolution, (B, H, W) or (B, T), True = padded element; a token is padding when every
    element of its stride cell is. Returns tokens (B, M, num_channels), M = H·W / total stride², and a mask (B, M) or
    None.

    Args:
        in_channels: C of the input.
        max_size: largest spatial size, ``(H, W)`` or ``(T,)``; must divide by the total stride.
        channels: output channels of each convolution.
        strides: downsampling factor of each layer.
        kernel_size: odd kernel size of every convolution (3: 3×3 kernels).
        downsample: ``"stride"`` (strided convolutions) or ``"pool"`` (max-pooling after each layer; see ``ConvStem``).
        positions: ``"fourier"`` or ``"learned"``.
        num_bands: Fourier bands per dimension.
    """

    def __init__(
        self,
        *,
        in_channels: int = 3,
        max_size: int | Sequence[int] = (224, 224),
        channels: Sequence[int] = (64, 128, 256),
        strides: Sequence[int] = (2, 2, 2),
        kernel_size: int = 3,
        downsample: str = "stride",
        positions: str = "fourier",
        num_bands: int = 32,
    ):
        super().__init__()
        self.config = capture_config(locals())
        max_size = as_shape(max_size, "max_size")
        if len(max_size) not in _CONV:
            raise ValueError(f"max_size: expected (T,) or (H, W), got {max_size}")
        self.stem = ConvStem(num_dims=len(max_size), in_channels=in_channels, channels=channels, strides=strides,
                             kernel_size=kernel_size, downsample=downsample)
        stride = self.stem.total_stride
        if any(s % stride for s in max_size):
            raise ValueError(f"max_size: expected sizes divisible by the total stride {stride} "
                             f"(product of strides={list(strides)}), got {max_size}")
        self.in_channels = in_channels
        self.max_size = max_size
        self.num_dims = len(max_size)
        self.max_grid = tuple(s // stride for s in max_size)
        self.positions = build_position_encoding(positions, max_shape=self.max_grid,
                                                 num_channels=self.stem.num_channels, num_bands=num_bands)
        self.concat_positions = positions == "fourier"
        self.num_channels = self.stem.num_channels + (self.positions.num_channels if self.concat_positions else 0)

    def check_input(self, x: Tensor) -> None:
        layout = _LAYOUTS[self.num_dims]
        check_tensor(x, "x", kind="float", rank=self.num_dims + 2, layout=layout)
        if x.shape[1] != self.in_channels:
            raise ValueError(f"x: expected {self.in_channels} channels (dim 1 of {layout}), got {x.shape[1]}")
        size = tuple(x.shape[2:])
        stride = self.stem.total_stride
        for name, n, m in zip("HW" if self.num_dims == 2 else "T", size, self.max_size):
            if n == 0 or n % stride:
                raise ValueError(
                    f"x: size {name}={n} (input size {size}) is not a positive multiple of the stem's total stride "
                    f"{stride}; nearest valid sizes: {nearest_multiples(n, stride)}"
                )
            if n > m:
                raise ValueError(f"x: size {name}={n} (input size {size}) exceeds max_size={self.max_size}")

    def valid_cells(self, pad_mask: Tensor | None, x: Tensor) -> Tensor | None:
        """The input-resolution validity (True = real) from ``pad_mask``, checked against ``x``."""
        if pad_mask is None:
            return None
        check_pad_mask(pad_mask, x.shape[0], *x.shape[2:], note=" (B and the input's spatial size)")
        return ~pad_mask

    def forward(self, x: Tensor, pad_mask: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
        self.check_input(x)
        check_model_dtype(x, "x", self)
        features, valid = self.stem(x, self.valid_cells(pad_mask, x))
        tokens = with_positions(rearrange(features, "b c ... -> b (...) c"), self.positions, features.shape[2:])
        return tokens, None if valid is None else ~valid.flatten(1)
