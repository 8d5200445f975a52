"""Figures for the logs (wandb and ``OUT/figures/``): a confusion matrix, where the latents look in the input (first
cross-attention), image grids.

matplotlib is imported when a figure is drawn, so training never needs it otherwise.
"""

from __future__ import annotations

import torch
from torch import Tensor

from perceiver import PerceiverIO, record_attention


def confusion_matrix(predictions: Tensor, labels: Tensor, *, num_classes: int) -> Tensor:
    """Counts (num_classes, num_classes) int64: row = true class, column = predicted class."""
    if predictions.shape != labels.shape or predictions.dim() != 1:
        raise ValueError(f"predictions, labels: expected two (B,) tensors, got {tuple(predictions.shape)} and "
                         f"{tuple(labels.shape)}")
    flat = labels.long() * num_classes + predictions.long()
    return torch.bincount(flat, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def confusion_matrix_figure(counts: Tensor, *, class_names: list[str] | None = None):
    """A matplotlib figure of ``counts`` (rows normalised to 1, counts written in the cells)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    counts = counts.detach().cpu()
    num_classes = counts.shape[0]
    names = class_names or [str(i) for i in range(num_classes)]
    rates = counts.double() / counts.sum(dim=1, keepdim=True).clamp(min=1)
    figure, axes = plt.subplots(figsize=(1.0 + 0.5 * num_classes, 1.0 + 0.5 * num_classes))
    axes.imshow(rates.numpy(), cmap="Blues", vmin=0.0, vmax=1.0)
    axes.set_xticks(range(num_classes), names, rotation=90)
    axes.set_yticks(range(num_classes), names)
    axes.set_xlabel("predicted")
    axes.set_ylabel("true")
    for row in range(num_classes):
        for column in range(num_classes):
            axes.text(column, row, int(counts[row, column]), ha="center", va="center", fontsize=7,
                      color="white" if rates[row, column] > 0.5 else "black")
    figure.tight_layout()
    return figure


@torch.no_grad()
def cross_attention_weights(model: PerceiverIO, x, pad_mask: Tensor | None = None) -> Tensor:
    """Attention of the latents over the input tokens in the encoder's first cross-attend: (B, heads, N, M).

    Recorded with ``perceiver.record_attention`` (the first attention the encoder calls); padded tokens get 0.
    """
    tokens, pad_mask = model.input_adapter(x, pad_mask)
    with record_attention(model.encoder) as calls:
        model.encoder(tokens, pad_mask)
    return calls[0].weights


def attention_map_figure(weights: Tensor, *, title: str = "latents × input tokens"):
    """A matplotlib figure of one sample's attention (heads, N, M), averaged over heads."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    image = weights.detach().float().mean(dim=0).cpu().numpy()
    figure, axes = plt.subplots(figsize=(6, 3))
    axes.imshow(image, aspect="auto", cmap="viridis", interpolation="nearest")
    axes.set_xlabel("input token")
    axes.set_ylabel("latent")
    axes.set_title(title)
    figure.tight_layout()
    return figure


def image_grid_figure(columns: dict[str, Tensor], *, cell_size: float = 1.2):
    """A matplotlib figure with one row per sample and one column per entry of ``columns``, e.g. original,
    masked input, reconstruction.

    Each value is (S, H, W) or single-channel (S, 1, H, W), the same S for all; NaN pixels (e.g. hidden patches)
    are drawn in red. Every image is scaled to its own range of finite values.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not columns:
        raise ValueError("columns: expected a non-empty {title: images (S, H, W)} dict, got an empty one")
    images = {}
    for title, value in columns.items():
        value = value.detach().float().cpu()
        value = value[:, 0] if value.dim() == 4 and value.shape[1] == 1 else value
        if value.dim() != 3:
            raise ValueError(f"columns[{title!r}]: expected (S, H, W) or (S, 1, H, W), got {tuple(value.shape)}")
        images[title] = value
    counts = {value.shape[0] for value in images.values()}
    if len(counts) != 1:
        raise ValueError(f"columns: expected the same number of images in every column, got {sorted(counts)}")
    rows = counts.pop()
    cmap = matplotlib.colormaps["gray"].with_extremes(bad="tab:red")
    figure, axes = plt.subplots(rows, len(images), figsize=(cell_size * len(images), cell_size * rows), squeeze=False)
    for column, (title, value) in enumerate(images.items()):
        axes[0, column].set_title(title, fontsize=8)
        for row in range(rows):
            axes[row, column].imshow(value[row].numpy(), cmap=cmap, interpolation="nearest")
            axes[row, column].axis("off")
    figure.tight_layout()
    return figure
