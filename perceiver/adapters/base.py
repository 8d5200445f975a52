"""The three kinds of object that adapt the modality-agnostic core to a task.

A task model is ``PerceiverIO(input_adapter=..., encoder=..., decoder=...)`` where the decoder holds a
``QueryProvider`` and an ``OutputAdapter``. Swapping a modality means swapping one of these objects.
"""

from __future__ import annotations

from torch import nn

from perceiver.config import Pretrained


class InputAdapter(Pretrained, nn.Module):
    """Raw input → tokens (B, M, C) and a pad mask (B, M), True = padding (None: no padding).

    Subclasses set ``num_channels`` (C) in ``__init__`` and implement ``forward(x, pad_mask=None)``.
    """

    num_channels: int


class QueryProvider(Pretrained, nn.Module):
    """Output queries (B, O, E) for the decoder, and an optional query pad mask (B, O).

    ``forward(tokens, pad_mask, **query_args)`` receives the adapted input (so that per-token queries can follow its
    length and batch size) and any keyword arguments given to ``PerceiverIO.forward`` (e.g. which output points to
    decode). Subclasses set ``num_channels`` (E).
    """

    num_channels: int


class OutputAdapter(Pretrained, nn.Module):
    """Decoder output (B, O, E) → what the task needs (logits, tokens, a reconstruction).
    Subclasses implement ``forward(x)``. One that shares weights with the input adapter (a tied embedding) sets
    ``tied = True`` and implements ``tie_to(input_adapter)``; ``PerceiverIO`` calls it when it is built.
    """
