"""An ensemble of classifiers trained apart on the same task: their class log-probabilities, averaged.

Models trained from different seeds make different mistakes where the training data leave a choice open (a voice, a
microphone, an engine the training never heard), so the mean of their log-probabilities is right more often than
either; measured on spoken digits in docs/exps.md. The cost is one forward pass per member.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from perceiver.config import Pretrained, capture_config


class EnsembleClassifier(Pretrained, nn.Module):
    """Classifiers that take the same input (each maps it to logits (B, K)); returns the mean of their class
    log-probabilities, normalised again (B, K): the normalised geometric mean of the members' distributions.

    ``input_adapter`` is the first member's, for code that reads how a model takes its input (a sample rate, a
    longest clip); the members take the same input, so it holds for each. Saved and loaded like any model of the
    package (``save_pretrained``, ``perceiver.load_model``).
    """

    def __init__(self, *, models: list[nn.Module]):
        super().__init__()
        self.config = capture_config(locals())
        if not models:
            raise ValueError("models: expected at least one classifier, got an empty list")
        self.models = nn.ModuleList(models)

    @property
    def input_adapter(self) -> nn.Module:
        first = self.models[0]
        if not hasattr(first, "input_adapter"):
            raise AttributeError(f"input_adapter: the first member, a {type(first).__name__}, has none")
        return first.input_adapter

    def forward(self, *inputs, **kwargs) -> Tensor:
        logits = [member(*inputs, **kwargs) for member in self.models]
        shapes = {tuple(found.shape) for found in logits}
        if len(shapes) != 1:
            raise ValueError(f"models: expected the members to give logits of one shape, got {sorted(shapes)}")
        # At least float32 (bf16 members), float64 kept.
        log_probs = [found.to(torch.promote_types(found.dtype, torch.float32)).log_softmax(dim=-1) for found in logits]
        return torch.stack(log_probs).mean(dim=0).log_softmax(dim=-1)
