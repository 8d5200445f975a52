"""Task builders: a whole ``PerceiverIO`` from an input adapter, with every width stated once.

    model = classifier(PatchAdapter(in_channels=1, max_size=(28, 28), patch_size=4, embed_channels=64),
                       num_classes=10, num_latents=32, num_latent_channels=64)

The encoder reads the input adapter's width, the decoder and its queries the latent width; everything else that
``PerceiverEncoder`` takes (heads, layers per block, blocks, ``dropout``, ``init_scale``, ``backend``, …) is passed
through as a keyword argument, and ``widening_factor`` sets the MLPs of the encoder and the decoder alike
(``decoder_kwargs`` overrides what the decoder shares with the encoder). The encoder is built before the output side,
as a reader writes them, so a seed gives the same weights as the hand-assembled model. The result is a plain
``PerceiverIO`` (its modules can be replaced or inspected as usual) that saves and loads like any other.

``perceiver_ar`` builds the autoregressive ``PerceiverAR`` (no adapter: it reads token ids), or, with no
``num_latents``, the decoder-only transformer (GPT) of the same layers that it is compared with.
"""

from __future__ import annotations

from typing import Any, Callable

from perceiver.adapters import (ClassificationOutput, ClassificationQuery, InputAdapter, ReconstructionOutput,
                                ReconstructionQueries, TokenOutput, TokenQueries)
from perceiver.ar import PerceiverAR
from perceiver.decoder import PerceiverDecoder
from perceiver.encoder import PerceiverEncoder
from perceiver.model import PerceiverIO

# Keyword arguments of the encoder that the decoder shares.
_SHARED = ("dropout", "init_scale", "activation_checkpointing", "backend")


def _check_adapter(input_adapter: Any) -> None:
    if not isinstance(input_adapter, InputAdapter):
        raise TypeError(f"input_adapter: expected an InputAdapter (e.g. perceiver.adapters.PatchAdapter), got "
                        f"{type(input_adapter).__name__}")


def encoder(num_input_channels: int, *, num_latents: int = 256, num_latent_channels: int = 256,
            widening_factor: int = 1, **encoder_kwargs) -> PerceiverEncoder:
    """A ``PerceiverEncoder`` whose cross- and self-attention MLPs share one ``widening_factor``."""
    return PerceiverEncoder(num_input_channels=num_input_channels, num_latents=num_latents,
                            num_latent_channels=num_latent_channels, cross_attention_widening_factor=widening_factor,
                            self_attention_widening_factor=widening_factor, **encoder_kwargs)


def _assemble(input_adapter: InputAdapter, output_side: Callable[[], tuple[Any, Any]], *, num_latents: int = 256,
              num_latent_channels: int = 256, widening_factor: int = 1, num_decoder_heads: int = 1,
              decoder_kwargs: dict[str, Any] | None = None, **encoder_kwargs) -> PerceiverIO:
    """Encoder first, then ``output_side()`` (query provider, output adapter), then the decoder."""
    _check_adapter(input_adapter)
    encoder_module = encoder(input_adapter.num_channels, num_latents=num_latents,
                             num_latent_channels=num_latent_channels, widening_factor=widening_factor,
                             **encoder_kwargs)
    query_provider, output_adapter = output_side()
    decoder_args = dict(num_cross_attention_heads=num_decoder_heads, cross_attention_widening_factor=widening_factor,
                        **{key: encoder_kwargs[key] for key in _SHARED if key in encoder_kwargs})
    decoder_args.update(decoder_kwargs or {})
    decoder = PerceiverDecoder(query_provider=query_provider, output_adapter=output_adapter,
                               num_latent_channels=num_latent_channels, **decoder_args)
    return PerceiverIO(input_adapter=input_adapter, encoder=encoder_module, decoder=decoder)


def perceiver_io(input_adapter: InputAdapter, *, query_provider, output_adapter, **kwargs) -> PerceiverIO:
    """The general form: any query provider and output adapter (built with the width they need).

    Keyword arguments: ``num_latents``, ``num_latent_channels``, ``widening_factor``, ``num_decoder_heads`` (1),
    ``decoder_kwargs`` (``PerceiverDecoder`` arguments that override those it shares with the encoder, e.g.
    ``{"cross_attention_widening_factor": 1}``), and any other ``PerceiverEncoder`` argument.
    """
    return _assemble(input_adapter, lambda: (query_provider, output_adapter), **kwargs)


def classifier(input_adapter: InputAdapter, *, num_classes: int, num_latent_channels: int = 256,
               **kwargs) -> PerceiverIO:
    """One learned query reads the latents; a linear map gives ``num_classes`` logits (B, num_classes)."""
    return _assemble(input_adapter, lambda: (
        ClassificationQuery(num_channels=num_latent_channels),
        ClassificationOutput(num_channels=num_latent_channels, num_classes=num_classes),
    ), num_latent_channels=num_latent_channels, **kwargs)


def token_model(input_adapter: InputAdapter, *, query_positions: str = "learned", num_bands: int = 64,
                tied: bool = True, vocab_size: int | None = None, **kwargs) -> PerceiverIO:
    """One query per input token and vocabulary logits (B, M, vocab_size): masked-token prediction.

    The queries and the output are as wide as the adapter's token embedding (``embed_channels``), so that with
    ``tied`` the output scores tokens against the input embedding itself (``ByteAdapter``).
    """
    _check_adapter(input_adapter)
    width = input_adapter.config.get("embed_channels")
    if not isinstance(width, int):
        raise ValueError(f"input_adapter: expected a token adapter with an int embed_channels (e.g. ByteAdapter), got "
                         f"{type(input_adapter).__name__}")
    max_length = input_adapter.config["max_length"]
    output_kwargs = {} if vocab_size is None else {"vocab_size": vocab_size}
    return _assemble(input_adapter, lambda: (
        TokenQueries(max_length=max_length, num_channels=width, positions=query_positions, num_bands=num_bands),
        TokenOutput(num_channels=width, tied=tied, **output_kwargs),
    ), **kwargs)


def autoencoder(input_adapter: InputAdapter, *, output_shapes: dict[str, list[int]], num_values: int,
                num_bands: int = 32, modality_channels: int = 32, num_latent_channels: int = 256,
                **kwargs) -> PerceiverIO:
    """Reconstruction queries (Fourier positions of each modality's output grid) and ``num_values`` per output point;
    decode a subset of points with ``model(x, modality=..., output_index=...)``."""
    return _assemble(input_adapter, lambda: (
        ReconstructionQueries(output_shapes=output_shapes, num_bands=num_bands, modality_channels=modality_channels,
                              num_channels=num_latent_channels),
        ReconstructionOutput(num_channels=num_latent_channels, num_values=num_values),
    ), num_latent_channels=num_latent_channels, **kwargs)


def perceiver_ar(*, max_seq_len: int, num_latents: int | None = None, **kwargs) -> PerceiverAR:
    """A ``PerceiverAR`` over ``max_seq_len`` ids; ``num_latents=None`` makes every position a latent (no prefix, no
    prefix dropout): a GPT of the same layers. Other keyword arguments go to ``PerceiverAR``."""
    if num_latents is None:
        num_latents = max_seq_len
        kwargs.setdefault("prefix_dropout", 0.0)
    return PerceiverAR(max_seq_len=max_seq_len, num_latents=num_latents, **kwargs)
