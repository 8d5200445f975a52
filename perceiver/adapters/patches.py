"""Images (B, C, H, W) and 1-D signals (B, C, T) → patch tokens, through the same code."""

from __future__ import annotations

import math
from typing import Sequence

from einops import rearrange
from torch import Tensor, nn

from perceiver.adapters.base import InputAdapter
from perceiver.adapters.checks import check_model_dtype, check_tensor
from perceiver.config import capture_config
from perceiver.masks import check_pad_mask, zero_padding
from perceiver.positions import as_shape, build_position_encoding, with_positions

# einops patterns that cut an input into non-overlapping patches, flattened as (patch cells, channel).
_PATCHIFY = {
    1: "b c (t pt) -> b t (pt c)",
    2: "b c (h ph) (w pw) -> b (h w) (ph pw c)",
}
# The inverse of _PATCHIFY: flattened patches back to the input layout (grid sizes h, w or t are given).
_UNPATCHIFY = {
    1: "b t (pt c) -> b c (t pt)",
    2: "b (h w) (ph pw c) -> b c (h ph) (w pw)",
}
_MASK_PATCHES = {
    1: "b (t pt) -> b t pt",
    2: "b (h ph) (w pw) -> b (h w) (ph pw)",
}
_LAYOUTS = {1: "(B, C, T)", 2: "(B, C, H, W)"}


def nearest_multiples(size: int, step: int) -> list[int]:
    """The multiples of ``step`` nearest to ``size`` (below and above; one value when it divides)."""
    below = size // step * step
    return sorted({m for m in (below, below + step) if m > 0})


class PatchAdapter(InputAdapter):
    """Non-overlapping patches of an image or a 1-D signal → tokens (B, M, num_channels), M = number of patches.

    ``max_size`` gives the spatial rank: ``(H, W)`` for images, ``(T,)`` for signals. Inputs may be any size up to
    ``max_size`` that divides by ``patch_size``; patch positions are absolute cells of the ``max_size`` patch grid
    (a smaller input takes its top-left corner), so padding a signal never moves a real patch.

    - Embedded mode (``embed_channels`` an int): a linear map of each flattened patch, plus learned positions
      (added; ``num_channels = embed_channels``) or concatenated Fourier features
      (``num_channels = embed_channels + Fourier channels``).
    - Raw mode (``embed_channels=None``, Fourier positions only): the patch values themselves concatenated with the
      Fourier features. With ``patch_size=1`` this is the original Perceiver's pixel input.

    ``pad_mask`` is at input resolution, (B, T) or (B, H, W), True = padded element; a patch is padding when all its
    elements are. The returned mask is per patch (B, M), or None when none was given.

    Args:
        in_channels: C of the input.
        max_size: largest spatial size, ``(H, W)`` or ``(T,)``.
        patch_size: patch size per spatial dimension (an int applies to every dimension).
        embed_channels: width of the linear patch embedding, or None for raw mode.
        positions: ``"fourier"`` or ``"learned"``.
        num_bands: Fourier bands per dimension.
        max_resolution: per-dimension resolution whose Nyquist frequency is the highest Fourier band; defaults to
            the patch grid of ``max_size``. (Checkpoints converted from other implementations fix it, e.g. at
            (224, 224) pixels, whatever the image size.)
    """

    def __init__(
        self,
        *,
        in_channels: int = 3,
        max_size: int | Sequence[int] = (224, 224),
        patch_size: int | Sequence[int] = 16,
        embed_channels: int | None = 256,
        positions: str = "fourier",
        num_bands: int = 32,
        max_resolution: int | Sequence[int] | None = None,
    ):
        super().__init__()
        self.config = capture_config(locals())
        max_size = as_shape(max_size, "max_size")
        if len(max_size) not in _PATCHIFY:
            raise ValueError(f"max_size: expected (T,) or (H, W), got {max_size}")
        patch = as_shape(patch_size, "patch_size")
        patch = patch * len(max_size) if len(patch) == 1 else patch
        if len(patch) != len(max_size):
            raise ValueError(
                f"patch_size: expected {len(max_size)} values (one per dimension of max_size), got {patch}"
            )
        if any(s % p for s, p in zip(max_size, patch)):
            raise ValueError(f"max_size: expected a multiple of patch_size={patch}, got {max_size}")
        if embed_channels is None and positions != "fourier":
            raise ValueError(f"positions: raw mode (embed_channels=None) needs 'fourier', got {positions!r}")
        self.in_channels = in_channels
        self.max_size = max_size
        self.patch_size = patch
        self.num_dims = len(max_size)
        self.patch_channels = in_channels * math.prod(patch)
        self.max_grid = tuple(s // p for s, p in zip(max_size, patch))
        self.embedding = None if embed_channels is None else nn.Linear(self.patch_channels, embed_channels)
        width = self.patch_channels if embed_channels is None else embed_channels
        # Fourier bands reach the Nyquist frequency of the grid of patches, the finest detail positions can tell.
        self.positions = build_position_encoding(
            positions,
            max_shape=self.max_grid,
            num_channels=width,
            num_bands=num_bands,
            max_resolution=max_resolution,
        )
        self.concat_positions = positions == "fourier"
        self.num_channels = width + (self.positions.num_channels if self.concat_positions else 0)

    def check_input(self, x: Tensor) -> None:
        layout = _LAYOUTS[self.num_dims]
        check_tensor(x, "x", kind="float", rank=self.num_dims + 2, layout=layout)
        if x.shape[1] != self.in_channels:
            raise ValueError(f"x: expected {self.in_channels} channels (dim 1 of {layout}), got {x.shape[1]}")
        size = tuple(x.shape[2:])
        for name, n, p, m in zip("HW" if self.num_dims == 2 else "T", size, self.patch_size, self.max_size):
            if n == 0:
                raise ValueError(f"x: size {name}=0 (input size {size}); expected at least one patch of {p}")
            if n % p:
                raise ValueError(
                    f"x: size {name}={n} (input size {size}) is not divisible by the patch size {p} "
                    f"(patch_size={self.patch_size}); nearest valid sizes: {nearest_multiples(n, p)}"
                )
            if n > m:
                raise ValueError(f"x: size {name}={n} (input size {size}) exceeds max_size={self.max_size}")

    def patchify(self, x: Tensor) -> Tensor:
        """Flattened patch values (B, M, prod(patch_size) * C), e.g. reconstruction targets."""
        self.check_input(x)
        sizes = dict(zip(("ph", "pw") if self.num_dims == 2 else ("pt",), self.patch_size))
        return rearrange(x, _PATCHIFY[self.num_dims], **sizes)

    def unpatchify(self, patches: Tensor, size: Sequence[int] | None = None) -> Tensor:
        """The inverse of ``patchify``: patches (B, M, prod(patch_size) * C) → the input layout at ``size``.

        ``size`` is the input's spatial size, ``(H, W)`` or ``(T,)``; by default ``max_size``. Used to look at
        reconstructed patches as images or signals.
        """
        size = self.max_size if size is None else as_shape(size, "size")
        grid = [n // p for n, p in zip(size, self.patch_size)]
        if len(size) != self.num_dims or any(n % p for n, p in zip(size, self.patch_size)):
            raise ValueError(f"size: expected {self.num_dims} multiples of patch_size={self.patch_size}, got {size}")
        layout = f"(B, {math.prod(grid)}, {self.patch_channels})"
        check_tensor(patches, "patches", kind="float", rank=3, layout=layout)
        if tuple(patches.shape[1:]) != (math.prod(grid), self.patch_channels):
            raise ValueError(f"patches: expected shape {layout} for size {size}, got {tuple(patches.shape)}")
        names = ("h", "w") if self.num_dims == 2 else ("t",)
        sizes = dict(zip(names, grid)) | dict(zip(("ph", "pw") if self.num_dims == 2 else ("pt",), self.patch_size))
        return rearrange(patches, _UNPATCHIFY[self.num_dims], **sizes)

    def forward(self, x: Tensor, pad_mask: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
        self.check_input(x)
        check_model_dtype(x, "x", self)
        token_pad = self.patch_pad_mask(pad_mask, x)
        patches = self.patchify(zero_padding(x, pad_mask, channel_dim=1))  # padded elements of real patches too
        tokens = patches if self.embedding is None else self.embedding(patches)
        grid = [n // p for n, p in zip(x.shape[2:], self.patch_size)]
        return with_positions(tokens, self.positions, grid), token_pad

    def patch_pad_mask(self, pad_mask: Tensor | None, x: Tensor) -> Tensor | None:
        if pad_mask is None:
            return None
        check_pad_mask(pad_mask, x.shape[0], *x.shape[2:], note=" (B and the input's spatial size)")
        sizes = dict(zip(("ph", "pw") if self.num_dims == 2 else ("pt",), self.patch_size))
        return rearrange(pad_mask, _MASK_PATCHES[self.num_dims], **sizes).all(dim=-1)
