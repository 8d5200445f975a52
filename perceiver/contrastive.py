"""Contrastive joint embeddings (CLIP / ImageBind style) and the retrieval metrics that evaluate them.

Each modality has its own embedder (any module mapping its input to (B, E), e.g. a ``PerceiverIO`` whose output
adapter is ``ClassificationOutput(num_classes=E)``). Paired samples are pulled together and every other pairing of
the batch pushed apart by the symmetric InfoNCE loss, with a learned temperature as in CLIP.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from perceiver.config import Pretrained, capture_config


def _check_embeddings(a: Tensor, b: Tensor, names: tuple[str, str]) -> None:
    for x, name in zip((a, b), names):
        if not isinstance(x, Tensor) or x.dim() != 2 or not x.is_floating_point():
            got = f"shape {tuple(x.shape)} dtype {x.dtype}" if isinstance(x, Tensor) else type(x).__name__
            raise ValueError(f"{name}: expected a float tensor of shape (B, E), got {got}")
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"{names[1]}: expected width {a.shape[1]} (that of {names[0]}), got {b.shape[1]}")


def info_nce_loss(a: Tensor, b: Tensor, logit_scale: Tensor | float) -> Tensor:
    """Symmetric InfoNCE: sample i of ``a`` (B, E) pairs with sample i of ``b`` (B, E); inputs are L2-normalised here.

    ``logit_scale`` multiplies the cosine similarities (CLIP's exp of a learned log-scale, 1 / temperature).
    """
    _check_embeddings(a, b, ("a", "b"))
    if a.shape[0] != b.shape[0]:
        raise ValueError(f"b: expected {a.shape[0]} samples (pairs of a), got {b.shape[0]}")
    logits = logit_scale * F.normalize(a, dim=-1) @ F.normalize(b, dim=-1).T
    targets = torch.arange(len(a), device=a.device)
    return (F.cross_entropy(logits, targets) + F.cross_entropy(logits.T, targets)) / 2


class ContrastiveModel(Pretrained, nn.Module):
    """Embedders per modality and a learned temperature.

    ``forward(x: dict[name, input], pad_masks: dict | None)`` returns ``{name: (B, E) unit-norm embedding}`` for the
    modalities in ``x``; ``loss(embeddings, first, second)`` is the InfoNCE loss between two of them.
    """

    def __init__(self, *, embedders: dict[str, nn.Module], temperature: float = 0.07, max_logit_scale: float = 100.0):
        super().__init__()
        self.config = capture_config(locals())
        if len(embedders) < 2:
            raise ValueError(f"embedders: expected at least two modalities, got {sorted(embedders)}")
        self.embedders = nn.ModuleDict(embedders)
        self.log_logit_scale = nn.Parameter(torch.tensor(math.log(1.0 / temperature)))
        self.max_logit_scale = max_logit_scale

    @property
    def logit_scale(self) -> Tensor:
        # Clamped as in CLIP, so that the temperature cannot collapse and blow up the logits.
        return self.log_logit_scale.exp().clamp(max=self.max_logit_scale)

    def forward(self, x: dict, pad_masks: dict | None = None) -> dict[str, Tensor]:
        pad_masks = pad_masks or {}
        unknown = sorted(set(x) - set(self.embedders))
        if unknown:
            raise ValueError(f"x: expected keys among {sorted(self.embedders)}, got unknown {unknown}")
        return {name: F.normalize(self.embedders[name](value, pad_masks.get(name)), dim=-1) for name, value in x.items()}

    def loss(self, embeddings: dict[str, Tensor], first: str, second: str) -> Tensor:
        return info_nce_loss(embeddings[first], embeddings[second], self.logit_scale)


def retrieval_recall(
    queries: Tensor, gallery: Tensor, query_labels: Tensor, gallery_labels: Tensor, ks: tuple[int, ...] = (1, 5)
) -> dict[int, float]:
    """Class-level recall@k: the share of queries with a gallery item of their own class among their k nearest.

    Nearness is cosine similarity. Returns ``{k: recall}``.
    """
    _check_embeddings(queries, gallery, ("queries", "gallery"))
    if query_labels.shape != (len(queries),) or gallery_labels.shape != (len(gallery),):
        raise ValueError(
            f"query_labels, gallery_labels: expected shapes ({len(queries)},) and ({len(gallery)},), got "
            f"{tuple(query_labels.shape)} and {tuple(gallery_labels.shape)}"
        )
    if max(ks) > len(gallery):
        raise ValueError(f"ks: expected values up to the gallery size {len(gallery)}, got {ks}")
    similarity = F.normalize(queries, dim=-1) @ F.normalize(gallery, dim=-1).T
    nearest = similarity.topk(max(ks), dim=1).indices
    hits = gallery_labels[nearest] == query_labels[:, None]
    return {k: float(hits[:, :k].any(dim=1).float().mean()) for k in ks}


def class_prototypes(embeddings: Tensor, labels: Tensor, num_classes: int) -> Tensor:
    """The unit-norm mean embedding of each class (num_classes, E); a class without samples gets zeros."""
    sums = torch.zeros(num_classes, embeddings.shape[1], dtype=embeddings.dtype, device=embeddings.device)
    sums.index_add_(0, labels, F.normalize(embeddings, dim=-1))
    return F.normalize(sums, dim=-1)


def prototype_accuracy(embeddings: Tensor, labels: Tensor, prototypes: Tensor) -> float:
    """Zero-shot classification: the share of samples whose nearest class prototype (cosine) is their class."""
    predicted = (F.normalize(embeddings, dim=-1) @ prototypes.T).argmax(dim=1)
    return float((predicted == labels).float().mean())
