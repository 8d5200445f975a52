"""Reconstruction: one query per output point of a modality (all of them, or a random subset during training)."""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import Tensor, nn

from perceiver.adapters.base import OutputAdapter, QueryProvider
from perceiver.adapters.checks import check_tensor
from perceiver.config import capture_config
from perceiver.positions import FourierPositionEncoding, as_shape


def sample_output_index(
    num_points: int,
    num_samples: int,
    *,
    batch_size: int | None = None,
    generator: torch.Generator | None = None,
    device=None,
) -> Tensor:
    """``num_samples`` distinct flat output points out of ``num_points``, drawn uniformly at random.

    Returns (K,) shared by the batch, or (B, K) with an independent draw per sample when ``batch_size`` is given.
    """
    if not 1 <= num_samples <= num_points:
        raise ValueError(f"num_samples: expected between 1 and num_points={num_points}, got {num_samples}")
    if batch_size is None:
        return torch.randperm(num_points, generator=generator)[:num_samples].to(device)
    if batch_size < 1:
        raise ValueError(f"batch_size: expected a positive int or None, got {batch_size}")
    scores = torch.rand(batch_size, num_points, generator=generator)
    return scores.argsort(dim=1)[:, :num_samples].to(device)


def gather_output_points(values: Tensor, output_index: Tensor) -> Tensor:
    """Values (B, N, V) at flat output points (K,) or (B, K) → (B, K, V): the targets of subsampled queries."""
    check_tensor(values, "values", kind="float", rank=3, layout="(B, N, V)")
    if output_index.dim() == 1:
        return values[:, output_index]
    if output_index.dim() != 2 or output_index.shape[0] != values.shape[0]:
        raise ValueError(f"output_index: expected (K,) or ({values.shape[0]}, K), got {tuple(output_index.shape)}")
    return torch.gather(values, 1, output_index[:, :, None].expand(-1, -1, values.shape[-1]))


def normalize_patches(patches: Tensor, *, eps: float = 1e-6) -> Tensor:
    """Each patch's values (B, M, V) minus their mean, over their standard deviation: MAE's reconstruction targets.

    Normalised targets make the loss weigh a faint patch's structure like a bright one's, instead of rewarding a
    model that predicts each patch's average brightness. The variance is the biased one over the V values of a
    patch; ``eps`` keeps a flat patch (all values equal) finite: it maps to zeros.
    """
    check_tensor(patches, "patches", kind="float", rank=3, layout="(B, M, V)")
    mean = patches.mean(dim=-1, keepdim=True)
    variance = patches.var(dim=-1, unbiased=False, keepdim=True)
    return (patches - mean) / (variance + eps).sqrt()


class ReconstructionQueries(QueryProvider):
    """Queries for the output points of one or more modalities, each on its own grid (``output_shapes``).

    The query of point ``i`` of modality ``n`` is the Fourier features of ``i``'s position in ``n``'s grid, zero
    padded to the widest modality's Fourier width, concatenated with ``n``'s learned modality embedding
    (``modality_channels``); when ``num_channels`` is an int a linear map then projects it to that width.

    Query arguments of ``forward`` (given to ``PerceiverIO.forward`` as keywords):
        modality: the name of the modality to decode; None decodes the only one, or all of them concatenated in
            the order of ``output_shapes`` (then ``output_index`` must be None).
        output_index: None (every point), or flat row-major point indices (K,) shared by the batch or (B, K) per
            sample, e.g. from ``sample_output_index``; the targets are ``gather_output_points(targets, index)``.
    No query mask is returned.

    Args:
        output_shapes: ``{modality: grid shape}``, e.g. ``{"image": [14, 14], "audio": [63, 4]}``.
        num_bands: Fourier bands per dimension.
        modality_channels: width of the learned modality embedding.
        num_channels: query width after a linear projection, or None for no projection.
        init_scale: standard deviation of the modality embeddings' initialisation.
    """

    def __init__(
        self,
        *,
        output_shapes: dict[str, Sequence[int]],
        num_bands: int = 32,
        modality_channels: int = 32,
        num_channels: int | None = None,
        init_scale: float = 0.02,
    ):
        super().__init__()
        self.config = capture_config(locals())
        if not isinstance(output_shapes, dict) or not output_shapes:
            raise ValueError(
                f"output_shapes: expected a non-empty dict {{modality: grid shape}}, got {output_shapes!r}"
            )
        shapes = {name: as_shape(shape, f"output_shapes[{name!r}]") for name, shape in output_shapes.items()}
        self.output_shapes = shapes
        self.positions = nn.ModuleDict(
            {name: FourierPositionEncoding(max_shape=shape, num_bands=num_bands) for name, shape in shapes.items()}
        )
        self.fourier_channels = max(encoding.num_channels for encoding in self.positions.values())
        self.modality_embedding = nn.Parameter(torch.randn(len(shapes), modality_channels) * init_scale)
        width = self.fourier_channels + modality_channels
        self.projection = None if num_channels is None else nn.Linear(width, num_channels)
        self.num_channels = width if num_channels is None else num_channels

    @property
    def modalities(self) -> list[str]:
        return list(self.output_shapes)

    def num_points(self, modality: str) -> int:
        """Number of output points of ``modality`` (the size of its grid)."""
        return math.prod(self.output_shapes[modality])

    def modality_queries(self, name: str, output_index: Tensor | None, batch_size: int, device) -> Tensor:
        encoding = self.positions[name]
        if output_index is None:
            output_index = torch.arange(self.num_points(name), device=device)
        else:
            if output_index.dim() not in (1, 2) or (output_index.dim() == 2 and output_index.shape[0] != batch_size):
                raise ValueError(f"output_index: expected (K,) or ({batch_size}, K), got {tuple(output_index.shape)}")
            encoding.check_index(output_index, "output_index")
        features = encoding.encode_index(output_index.to(device)).to(self.modality_embedding.dtype)
        features = nn.functional.pad(features, (0, self.fourier_channels - features.shape[-1]))
        index = self.modalities.index(name)
        modality = self.modality_embedding[index].expand(*features.shape[:-1], -1)
        queries = torch.cat([features, modality], dim=-1)
        return queries.expand(batch_size, -1, -1) if queries.dim() == 2 else queries

    def forward(
        self,
        tokens: Tensor,
        pad_mask: Tensor | None = None,
        *,
        modality: str | None = None,
        output_index: Tensor | None = None,
    ) -> tuple[Tensor, None]:
        check_tensor(tokens, "tokens", kind="float", rank=3, layout="(B, M, C)")
        batch_size = tokens.shape[0]
        if modality is not None and modality not in self.output_shapes:
            raise ValueError(f"modality: expected one of {self.modalities} or None, got {modality!r}")
        if modality is None and len(self.modalities) == 1:
            modality = self.modalities[0]
        if modality is None:
            if output_index is not None:
                raise ValueError(f"modality: output_index needs one modality among {self.modalities}, got None")
            parts = [self.modality_queries(name, None, batch_size, tokens.device) for name in self.modalities]
            queries = torch.cat(parts, dim=1)
        else:
            queries = self.modality_queries(modality, output_index, batch_size, tokens.device)
        if self.projection is not None:
            queries = self.projection(queries)
        return queries, None


class ReconstructionOutput(OutputAdapter):
    """Decoded output points (B, K, num_channels) → values (B, K, num_values), e.g. a patch's pixels or mel bins."""

    def __init__(self, *, num_channels: int = 256, num_values: int = 768):
        super().__init__()
        self.config = capture_config(locals())
        self.num_channels = num_channels
        self.linear = nn.Linear(num_channels, num_values)

    def forward(self, x: Tensor) -> Tensor:
        check_tensor(x, "x", kind="float", rank=3, layout=f"(B, K, {self.num_channels})")
        if x.shape[-1] != self.num_channels:
            raise ValueError(
                f"x: expected {self.num_channels} channels (B, K, {self.num_channels}), got {tuple(x.shape)}"
            )
        return self.linear(x)
