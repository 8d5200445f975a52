"""Perceiver IO: input adapter → encoder → decoder (with its query provider and output adapter)."""

from __future__ import annotations

from torch import Tensor, nn

from perceiver.adapters.base import InputAdapter
from perceiver.config import Pretrained, capture_config
from perceiver.decoder import PerceiverDecoder
from perceiver.encoder import PerceiverEncoder


class PerceiverIO(Pretrained, nn.Module):
    """A task model: ``forward(x, pad_mask=None, **query_args)`` returns the output adapter's result.

    ``x`` is whatever the input adapter takes (a tensor, or a dict of tensors for several modalities); ``pad_mask``
    (B, M) bool, True = padding, is passed to the input adapter; ``query_args`` go to the decoder's query provider
    (e.g. which output points to decode).
    """

    def __init__(self, *, input_adapter: InputAdapter, encoder: PerceiverEncoder, decoder: PerceiverDecoder):
        super().__init__()
        self.config = capture_config(locals())
        if input_adapter.num_channels != encoder.num_input_channels:
            raise ValueError(
                f"encoder: expected num_input_channels={input_adapter.num_channels} (the input adapter's "
                f"num_channels), got {encoder.num_input_channels}"
            )
        latent_channels = encoder.config["num_latent_channels"]
        if decoder.num_latent_channels != latent_channels:
            raise ValueError(
                f"decoder: expected num_latent_channels={latent_channels} (the encoder's), got {decoder.num_latent_channels}"
            )
        self.input_adapter = input_adapter
        self.encoder = encoder
        self.decoder = decoder
        # An output adapter that shares weights with the input adapter (e.g. a tied byte embedding) is tied here, so
        # a model rebuilt from its stored config is tied again without the user's help.
        tie_to = getattr(decoder.output_adapter, "tie_to", None)
        if tie_to is not None and getattr(decoder.output_adapter, "tied", False):
            tie_to(input_adapter)

    def forward(self, x, pad_mask: Tensor | None = None, **query_args):
        tokens, pad_mask = self.input_adapter(x, pad_mask)
        latents = self.encoder(tokens, pad_mask)
        return self.decoder(latents, tokens=tokens, pad_mask=pad_mask, **query_args)
