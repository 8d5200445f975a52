"""Optimizers: AdamW (from PyTorch) or LAMB, with weight decay on weight matrices only."""

from __future__ import annotations

import torch
from torch import nn

OPTIMIZERS = ("adamw", "lamb")


class Lamb(torch.optim.Optimizer):
    """LAMB (You et al., 2019): Adam's update rescaled per parameter tensor by a trust ratio.

    For each tensor ``w`` with gradient ``g`` at step ``t``::

        m = β1·m + (1 − β1)·g            v = β2·v + (1 − β2)·g²
        u = (m / (1 − β1^t)) / (sqrt(v / (1 − β2^t)) + eps) + weight_decay·w
        w = w − lr · (‖w‖ / ‖u‖) · u     (trust ratio 1 when ‖w‖ or ‖u‖ is 0)

    The trust ratio lets large batches use one learning rate for layers of very different scales. A parameter
    group with ``adapt=False`` takes Adam's step ``lr · u`` instead: a bias that starts at zero would otherwise move
    by ``lr`` once and then by about ``lr²`` a step (its trust ratio is its own tiny norm), so biases and norm
    gains are left out of the adaptation, as TensorFlow Addons' LAMB leaves out what it does not decay.
    """

    def __init__(self, params, *, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-6,
                 weight_decay: float = 0.0):
        if lr <= 0:
            raise ValueError(f"lr: expected a positive float, got {lr}")
        if not all(0.0 <= beta < 1.0 for beta in betas):
            raise ValueError(f"betas: expected two floats in [0, 1), got {betas}")
        super().__init__(params, dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay, adapt=True))

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:
                    state["step"] = torch.zeros((), dtype=torch.float32)
                    state["exp_avg"] = torch.zeros_like(p)
                    state["exp_avg_sq"] = torch.zeros_like(p)
                state["step"] += 1
                t = float(state["step"])
                exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
                exp_avg.lerp_(p.grad, 1 - beta1)
                exp_avg_sq.mul_(beta2).addcmul_(p.grad, p.grad, value=1 - beta2)
                update = (exp_avg / (1 - beta1**t)) / ((exp_avg_sq / (1 - beta2**t)).sqrt() + group["eps"])
                if group["weight_decay"]:
                    update.add_(p, alpha=group["weight_decay"])
                if not group.get("adapt", True):  # a group saved before the option existed adapts
                    p.sub_(update * group["lr"])
                    continue
                weight_norm, update_norm = p.norm(), update.norm()
                trust_ratio = torch.where(
                    (weight_norm > 0) & (update_norm > 0), weight_norm / update_norm, torch.ones_like(weight_norm)
                )
                p.sub_(update * (group["lr"] * trust_ratio))
        return loss


def build_optimizer(
    model: nn.Module,
    *,
    name: str = "adamw",
    lr: float,
    weight_decay: float = 0.01,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
) -> torch.optim.Optimizer:
    """AdamW or LAMB over the model's trainable parameters.

    Weight decay applies to tensors of two or more dimensions (linear and embedding weights); biases, LayerNorm
    parameters and other vectors are not decayed, as in nanoGPT, and with LAMB take Adam's step (no trust ratio).
    """
    if name not in OPTIMIZERS:
        raise ValueError(f"name: expected one of {OPTIMIZERS}, got {name!r}")
    parameters = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in parameters if p.dim() >= 2], "weight_decay": weight_decay},
        {"params": [p for p in parameters if p.dim() < 2], "weight_decay": 0.0},
    ]
    if name == "lamb":
        groups[1]["adapt"] = False
        return Lamb(groups, lr=lr, betas=betas, eps=eps)
    return torch.optim.AdamW(groups, lr=lr, betas=betas, eps=eps)
