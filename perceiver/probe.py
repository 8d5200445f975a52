"""Linear probes: how much of a task a frozen representation already makes linearly separable.

A probe is multinomial logistic regression on standardised features, fitted full batch with L-BFGS (deterministic
for given features, no learning rate to tune) and a little L2 weight decay::

    probe = fit_linear_probe(train_features, train_labels, num_classes=10)
    accuracy = probe.accuracy(test_features, test_labels)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from perceiver.config import Pretrained, capture_config


def _check_features(features: Tensor, labels: Tensor | None, name: str = "features") -> None:
    if not isinstance(features, Tensor) or features.dim() != 2 or not features.is_floating_point():
        got = f"shape {tuple(features.shape)} dtype {features.dtype}" if isinstance(features, Tensor) else type(features).__name__
        raise ValueError(f"{name}: expected a float tensor of shape (S, F), got {got}")
    if labels is not None and (labels.dim() != 1 or labels.shape[0] != features.shape[0] or labels.is_floating_point()):
        raise ValueError(f"labels: expected an int tensor of shape ({features.shape[0]},), got shape "
                         f"{tuple(labels.shape)} dtype {labels.dtype}")


class LinearProbe(Pretrained, nn.Module):
    """Standardise features (S, F) with the training set's statistics, then a linear map to class logits (S, K)."""

    def __init__(self, *, num_features: int, num_classes: int):
        super().__init__()
        self.config = capture_config(locals())
        self.register_buffer("mean", torch.zeros(num_features))
        self.register_buffer("std", torch.ones(num_features))
        self.linear = nn.Linear(num_features, num_classes)

    def forward(self, features: Tensor) -> Tensor:
        _check_features(features, None)
        if features.shape[1] != self.mean.shape[0]:
            raise ValueError(f"features: expected {self.mean.shape[0]} features (S, {self.mean.shape[0]}), got "
                             f"{tuple(features.shape)}")
        return self.linear((features.to(self.mean.dtype) - self.mean) / self.std)

    @torch.no_grad()
    def accuracy(self, features: Tensor, labels: Tensor) -> float:
        """Fraction of samples whose highest logit is their label."""
        _check_features(features, labels)
        return (self(features).argmax(dim=1) == labels.to(features.device)).double().mean().item()


def fit_linear_probe(features: Tensor, labels: Tensor, *, num_classes: int, weight_decay: float = 1e-4,
                     max_iter: int = 500) -> LinearProbe:
    """Fit a ``LinearProbe`` on (S, F) features and (S,) labels by full-batch L-BFGS.

    The loss is the mean cross-entropy plus ``weight_decay / 2`` times the squared norm of the weights (not the
    bias): a little decay keeps the solution finite when the classes are separable.
    """
    _check_features(features, labels)
    if int(labels.min()) < 0 or int(labels.max()) >= num_classes:
        raise ValueError(f"labels: expected classes in [0, {num_classes}), got [{int(labels.min())}, {int(labels.max())}]")
    if weight_decay < 0:
        raise ValueError(f"weight_decay: expected a float >= 0, got {weight_decay}")
    features = features.detach().float()
    probe = LinearProbe(num_features=features.shape[1], num_classes=num_classes).to(features.device)
    probe.mean.copy_(features.mean(dim=0))
    # A constant feature (std 0) is standardised to 0 rather than divided by 0.
    probe.std.copy_(features.std(dim=0).clamp(min=1e-6))
    nn.init.zeros_(probe.linear.weight)
    nn.init.zeros_(probe.linear.bias)
    labels = labels.to(features.device).long()
    optimizer = torch.optim.LBFGS(probe.linear.parameters(), lr=1.0, max_iter=max_iter, history_size=20,
                                  tolerance_grad=1e-6, tolerance_change=1e-9, line_search_fn="strong_wolfe")

    def closure() -> Tensor:
        optimizer.zero_grad()
        loss = F.cross_entropy(probe(features), labels) + weight_decay / 2 * probe.linear.weight.square().sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        optimizer.step(closure)
    probe.eval()
    return probe
