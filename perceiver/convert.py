"""Build our ``PerceiverIO`` from a Hugging Face ``transformers`` Perceiver, with the same outputs.

``from_huggingface(hf_model)`` reads the HF model's modules (their shapes give every width, so configs with
non-default ``qk_channels`` or widening factors convert too) and copies its weights. ``load_huggingface(directory)``
does the same for a checkpoint saved in HF format on disk (e.g. DeepMind's released models), in one call.

Supported (``PerceiverModel`` instances built from the same parts convert as well):

- ``PerceiverForMaskedLM``: bytes in, per-token vocabulary logits out (``ByteAdapter`` → ``TokenQueries`` /
  ``TokenOutput`` tied to the byte embedding);
- ``PerceiverForSequenceClassification``: bytes in, ``ClassificationQuery`` / ``ClassificationOutput`` out;
- ``PerceiverForImageClassificationFourier``: raw pixels concatenated with 2-D Fourier features
  (``PatchAdapter`` in raw mode with ``patch_size=1``), classification decoder;
- ``PerceiverImagePreprocessor(prep_type="patches")`` (space-to-depth patches with Fourier features) in a
  ``PerceiverModel`` with a classification decoder.

What differs, by design:

- Byte ids. HF's vocabulary is ``[PAD], [BOS], [EOS], [MASK], [CLS], [SEP]`` then the 256 bytes (262 ids); ours is the
  bytes then ``PAD, MASK, CLS, SEP`` (260 ids). The embedding rows and output biases are permuted accordingly; HF's
  ``[BOS]``/``[EOS]`` (unused by its tokenizer) have no counterpart. ``ids_from_huggingface`` maps HF ids to ours.
- Output lengths. HF's masked-LM decoder always returns ``max_position_embeddings`` positions; ours returns the input's
  length. HF computes outputs at padded positions; ours zeroes the decoder output of a padded query (its logits are
  the output bias). Real positions agree.
- Image positions. HF recomputes Fourier positions in [-1, 1] for each input size; ours are absolute cells of the
  ``image_size`` grid. They agree on images of ``image_size`` (what the classifiers were trained on).
- HF computes Fourier features in float32 whatever the model's dtype; ours computes them in float64 for float64
  inputs (float32 otherwise), so float64 outputs differ by HF's float32 rounding (about 1e-5).

Not convertible (``UnsupportedModelError``): ``prep_type="pixels"`` with ``spatial_downsample > 1`` (HF slices the
batch and channel axes of a 4-D input instead of height and width, so there is no correct behaviour to match), the
conv / conv1x1 image preprocessors (``...ConvProcessing``, ``...Learned``), optical flow, multimodal autoencoding,
audio, ``use_query_residual=False`` in the encoder, activations other than exact GELU, and projected position
encodings.
"""

from __future__ import annotations

import os

import torch
from torch import Tensor, nn

from perceiver.adapters import (
    CLS_ID,
    MASK_ID,
    PAD_ID,
    SEP_ID,
    VOCAB_SIZE,
    ByteAdapter,
    ClassificationOutput,
    ClassificationQuery,
    PatchAdapter,
    TokenOutput,
    TokenQueries,
)
from perceiver.decoder import PerceiverDecoder
from perceiver.encoder import PerceiverEncoder
from perceiver.layers import CrossAttentionLayer, SelfAttentionLayer
from perceiver.model import PerceiverIO

# HF's byte tokenizer: 6 special ids, then byte b at id b + 6.
HF_NUM_SPECIAL_IDS = 6
HF_VOCAB_SIZE = HF_NUM_SPECIAL_IDS + 256
HF_SPECIAL_TO_OURS = {0: PAD_ID, 3: MASK_ID, 4: CLS_ID, 5: SEP_ID}  # [PAD], [MASK], [CLS], [SEP]

SUPPORTED = (
    "PerceiverForMaskedLM",
    "PerceiverForSequenceClassification",
    "PerceiverForImageClassificationFourier",
    "PerceiverModel with a text, pixel (spatial_downsample=1) or patch preprocessor and a classification decoder",
)


class UnsupportedModelError(ValueError):
    """The Hugging Face model has a part that our modules cannot express."""


def hf_id_of_our_id() -> Tensor:
    """(VOCAB_SIZE,) long: the HF id of each of our ids (used to permute embedding rows and output biases)."""
    index = torch.arange(VOCAB_SIZE) + HF_NUM_SPECIAL_IDS  # bytes
    for hf_id, our_id in HF_SPECIAL_TO_OURS.items():
        index[our_id] = hf_id
    return index


def ids_from_huggingface(hf_ids: Tensor) -> Tensor:
    """Our byte ids for HF Perceiver tokenizer ids (same shape); raises on [BOS]/[EOS], which we do not have."""
    if not isinstance(hf_ids, Tensor) or hf_ids.is_floating_point() or hf_ids.dtype == torch.bool:
        got = hf_ids.dtype if isinstance(hf_ids, Tensor) else type(hf_ids).__name__
        raise TypeError(f"hf_ids: expected an integer tensor of HF Perceiver token ids, got {got}")
    if hf_ids.numel() and (int(hf_ids.min()) < 0 or int(hf_ids.max()) >= HF_VOCAB_SIZE):
        raise ValueError(
            f"hf_ids: expected ids in [0, {HF_VOCAB_SIZE}), got values in [{int(hf_ids.min())}, {int(hf_ids.max())}]"
        )
    lookup = torch.full((HF_VOCAB_SIZE,), -1, dtype=torch.long, device=hf_ids.device)
    lookup[hf_id_of_our_id().to(hf_ids.device)] = torch.arange(VOCAB_SIZE, device=hf_ids.device)
    ours = lookup[hf_ids.long()]
    if bool((ours < 0).any()):
        raise ValueError("hf_ids: contains [BOS] (1) or [EOS] (2), which have no counterpart in our byte vocabulary")
    return ours


def from_huggingface(hf_model: nn.Module, *, image_size: int | tuple[int, int] | None = None) -> PerceiverIO:
    """Our ``PerceiverIO`` with the weights of ``hf_model`` (a ``transformers`` Perceiver), in its dtype, eval mode.

    ``image_size`` (image models only): the (H, W) the model will see; defaults to ``config.image_size``.
    Raises ``UnsupportedModelError`` naming the part that cannot be converted.
    """
    perceiver = _perceiver_of(hf_model)
    config = perceiver.config
    _check_config(config)
    input_adapter = _input_adapter(perceiver.input_preprocessor, config, image_size)
    encoder = _encoder(perceiver, input_adapter.num_channels)
    decoder = _decoder(hf_model, perceiver, config)
    model = PerceiverIO(input_adapter=input_adapter, encoder=encoder, decoder=decoder)
    parameter = next(hf_model.parameters())
    model.to(dtype=parameter.dtype, device=parameter.device)
    with torch.no_grad():
        _copy_input_adapter(perceiver.input_preprocessor, model.input_adapter)
        _copy_encoder(perceiver, model.encoder)
        _copy_decoder(hf_model, perceiver, model.decoder)
    return model.eval()


def load_huggingface(
    directory: str | os.PathLike, *, image_size: int | tuple[int, int] | None = None
) -> PerceiverIO:
    """Load a Perceiver checkpoint saved in HF format (``config.json`` + weights) and convert it.

    The class is taken from ``config.architectures`` (e.g. ``PerceiverForMaskedLM``); nothing is downloaded.
    """
    import transformers

    config = transformers.PerceiverConfig.from_pretrained(directory, local_files_only=True)
    architectures = config.architectures or ["PerceiverModel"]
    cls = getattr(transformers, architectures[0], None)
    if cls is None or not architectures[0].startswith("Perceiver"):
        raise UnsupportedModelError(
            f"directory: expected a Perceiver checkpoint (config.architectures naming a transformers Perceiver class), "
            f"got architectures={architectures}"
        )
    hf_model = cls.from_pretrained(directory, local_files_only=True)
    return from_huggingface(hf_model, image_size=image_size)


# --- what the HF model is made of -------------------------------------------------------------------------------


def _perceiver_of(hf_model: nn.Module) -> nn.Module:
    name = type(hf_model).__name__
    perceiver = hf_model if name == "PerceiverModel" else getattr(hf_model, "perceiver", None)
    if perceiver is None or type(perceiver).__name__ != "PerceiverModel":
        raise UnsupportedModelError(
            f"hf_model: expected a transformers Perceiver model (one of: {'; '.join(SUPPORTED)}), got {name}"
        )
    # Other PerceiverFor* classes fail below, at the first part (preprocessor, decoder) that has no counterpart.
    if perceiver.output_postprocessor is not None:
        raise UnsupportedModelError(f"hf_model: {name} has an output postprocessor, which is not convertible")
    return perceiver


def _check_config(config) -> None:
    if config.hidden_act != "gelu":
        raise UnsupportedModelError(f"config.hidden_act: expected 'gelu' (our MLPs use exact GELU), got {config.hidden_act!r}")
    if not config.use_query_residual:
        raise UnsupportedModelError("config.use_query_residual: expected True (our encoder's cross-attention is residual)")


def _input_adapter(preprocessor: nn.Module | None, config, image_size) -> nn.Module:
    kind = type(preprocessor).__name__
    if kind == "PerceiverTextPreprocessor":
        if config.vocab_size != HF_VOCAB_SIZE:
            raise UnsupportedModelError(
                f"config.vocab_size: expected {HF_VOCAB_SIZE} (HF's byte tokenizer), got {config.vocab_size}"
            )
        return ByteAdapter(
            max_length=config.max_position_embeddings, embed_channels=config.d_model, positions="learned"
        )
    if kind == "PerceiverImagePreprocessor":
        return _image_adapter(preprocessor, config, image_size)
    raise UnsupportedModelError(
        f"input_preprocessor: expected PerceiverTextPreprocessor or PerceiverImagePreprocessor "
        f"(prep_type 'pixels' or 'patches'), got {kind}"
    )


def _image_adapter(preprocessor: nn.Module, config, image_size) -> PatchAdapter:
    prep_type, downsample = preprocessor.prep_type, preprocessor.spatial_downsample
    if prep_type not in ("pixels", "patches"):
        raise UnsupportedModelError(
            f"input_preprocessor.prep_type: expected 'pixels' or 'patches' (conv stems have no counterpart here), "
            f"got {prep_type!r}"
        )
    if prep_type == "pixels" and downsample != 1:
        raise UnsupportedModelError(
            f"input_preprocessor.spatial_downsample: expected 1 for prep_type='pixels', got {downsample}; HF subsamples "
            "the batch and channel axes of 4-D inputs there (inputs[::s, ::s]), which is a bug we do not reproduce"
        )
    if preprocessor.conv_after_patching:
        raise UnsupportedModelError("input_preprocessor.conv_after_patching: expected False, got True")
    positions = preprocessor.position_embeddings
    if (
        preprocessor.position_encoding_type != "fourier"
        or preprocessor.concat_or_add_pos != "concat"
        or preprocessor.project_pos_dim > 0
        or not positions.concat_pos
        or positions.sine_only
    ):
        raise UnsupportedModelError(
            "input_preprocessor: expected unprojected, concatenated Fourier positions with raw positions and sines "
            f"and cosines, got position_encoding_type={preprocessor.position_encoding_type!r}, "
            f"concat_or_add_pos={preprocessor.concat_or_add_pos!r}, project_pos_dim={preprocessor.project_pos_dim}, "
            f"concat_pos={positions.concat_pos}, sine_only={positions.sine_only}"
        )
    size = config.image_size if image_size is None else image_size
    size = (size, size) if isinstance(size, int) else tuple(size)
    if len(size) != 2 or len(positions.max_resolution) != 2:
        raise UnsupportedModelError(f"image_size: expected 2-D images (H, W), got {size}")
    return PatchAdapter(
        in_channels=preprocessor.in_channels,
        max_size=size,
        patch_size=downsample,
        embed_channels=None,
        positions="fourier",
        num_bands=positions.num_bands,
        max_resolution=tuple(int(r) for r in positions.max_resolution),
    )


def _attention_widths(hf_layer: nn.Module) -> dict:
    attention = hf_layer.attention.self
    return dict(
        num_heads=attention.num_heads,
        num_qk_channels=attention.query.out_features,
        num_v_channels=attention.value.out_features,
        widening_factor=hf_layer.mlp.dense1.out_features // hf_layer.mlp.dense1.in_features,
    )


def _encoder(perceiver: nn.Module, num_input_channels: int) -> PerceiverEncoder:
    config, hf_encoder = perceiver.config, perceiver.encoder
    cross = _attention_widths(hf_encoder.cross_attention)
    first = _attention_widths(hf_encoder.self_attends[0])
    if any(_attention_widths(layer) != first for layer in hf_encoder.self_attends):
        raise UnsupportedModelError("encoder.self_attends: expected layers of one shape, got several")
    return PerceiverEncoder(
        num_input_channels=num_input_channels,
        num_latents=config.num_latents,
        num_latent_channels=config.d_latents,
        num_cross_attention_heads=cross["num_heads"],
        num_cross_attention_qk_channels=cross["num_qk_channels"],
        num_cross_attention_v_channels=cross["num_v_channels"],
        cross_attention_widening_factor=cross["widening_factor"],
        num_self_attention_heads=first["num_heads"],
        num_self_attention_qk_channels=first["num_qk_channels"],
        num_self_attention_v_channels=first["num_v_channels"],
        self_attention_widening_factor=first["widening_factor"],
        num_self_attention_layers_per_block=config.num_self_attends_per_block,
        # HF applies its one block num_blocks times: weights shared by every repeat, the first included.
        num_self_attention_blocks=config.num_blocks,
        first_self_attention_block_shared=True,
    )


def _decoder(hf_model: nn.Module, perceiver: nn.Module, config) -> PerceiverDecoder:
    hf_decoder = perceiver.decoder
    kind = type(hf_decoder).__name__
    if kind == "PerceiverClassificationDecoder":
        basic = hf_decoder.decoder
        _check_basic_decoder(basic, final_project=True)
        num_channels = basic.num_channels
        query = ClassificationQuery(num_channels=num_channels)
        output = ClassificationOutput(num_channels=num_channels, num_classes=basic.output_num_channels)
    elif kind == "PerceiverBasicDecoder" and hasattr(hf_model, "embedding_decoder"):
        basic = hf_decoder
        _check_basic_decoder(basic, final_project=False)
        num_channels = basic.num_channels
        if num_channels != config.d_model:
            raise UnsupportedModelError(
                f"decoder.num_channels: expected d_model={config.d_model} (tied output embedding), got {num_channels}"
            )
        query = TokenQueries(max_length=basic.output_index_dims, num_channels=num_channels, positions="learned")
        output = TokenOutput(num_channels=num_channels, vocab_size=VOCAB_SIZE, tied=True)
    else:
        raise UnsupportedModelError(
            f"decoder: expected a PerceiverClassificationDecoder, or the PerceiverBasicDecoder of "
            f"PerceiverForMaskedLM, got {kind}"
        )
    widths = _attention_widths(basic.decoding_cross_attention)
    return PerceiverDecoder(
        query_provider=query,
        output_adapter=output,
        num_latent_channels=config.d_latents,
        num_cross_attention_heads=widths["num_heads"],
        num_cross_attention_qk_channels=widths["num_qk_channels"],
        num_cross_attention_v_channels=widths["num_v_channels"],
        cross_attention_widening_factor=widths["widening_factor"],
        query_residual=basic.decoding_cross_attention.attention.use_query_residual,
    )


def _check_basic_decoder(basic: nn.Module, *, final_project: bool) -> None:
    if basic.position_encoding_type != "trainable" or not isinstance(basic.positions_projection, nn.Identity):
        raise UnsupportedModelError(
            f"decoder: expected unprojected trainable query positions, got {basic.position_encoding_type!r} "
            f"with {type(basic.positions_projection).__name__}"
        )
    if basic.concat_preprocessed_input or basic.final_project != final_project:
        raise UnsupportedModelError(
            f"decoder: expected concat_preprocessed_input=False and final_project={final_project}, got "
            f"{basic.concat_preprocessed_input} and {basic.final_project}"
        )


# --- weights ------------------------------------------------------------------------------------------------------


def _copy(target: Tensor, source: Tensor, name: str) -> None:
    if target.shape != source.shape:
        raise UnsupportedModelError(f"{name}: expected shape {tuple(target.shape)}, got {tuple(source.shape)}")
    target.copy_(source)


def _copy_linear(target: nn.Linear, source: nn.Linear, name: str) -> None:
    _copy(target.weight, source.weight, f"{name}.weight")
    _copy(target.bias, source.bias, f"{name}.bias")


def _copy_norm(target: nn.LayerNorm, source: nn.LayerNorm, name: str) -> None:
    if target.eps != source.eps:
        raise UnsupportedModelError(f"{name}.eps: expected {target.eps}, got {source.eps}")
    _copy(target.weight, source.weight, f"{name}.weight")
    _copy(target.bias, source.bias, f"{name}.bias")


def _copy_layer(target: CrossAttentionLayer | SelfAttentionLayer, source: nn.Module, name: str) -> None:
    """An HF ``PerceiverLayer`` into our cross- or self-attention layer (same pre-LayerNorm layout)."""
    hf_attention = source.attention.self
    if isinstance(target, CrossAttentionLayer):
        _copy_norm(target.q_norm, hf_attention.layernorm1, f"{name}.attention.self.layernorm1")
        _copy_norm(target.kv_norm, hf_attention.layernorm2, f"{name}.attention.self.layernorm2")
    else:
        _copy_norm(target.norm, hf_attention.layernorm1, f"{name}.attention.self.layernorm1")
    ours = target.attention
    for mine, theirs in (("q_proj", "query"), ("k_proj", "key"), ("v_proj", "value")):
        _copy_linear(getattr(ours, mine), getattr(hf_attention, theirs), f"{name}.attention.self.{theirs}")
    _copy_linear(ours.o_proj, source.attention.output.dense, f"{name}.attention.output.dense")
    _copy_norm(target.mlp[0], source.layernorm, f"{name}.layernorm")
    _copy_linear(target.mlp[1], source.mlp.dense1, f"{name}.mlp.dense1")
    _copy_linear(target.mlp[3], source.mlp.dense2, f"{name}.mlp.dense2")


def _copy_input_adapter(preprocessor: nn.Module, adapter: nn.Module) -> None:
    if isinstance(adapter, ByteAdapter):
        rows = hf_id_of_our_id().to(preprocessor.embeddings.weight.device)
        _copy(adapter.embedding.weight, preprocessor.embeddings.weight[rows], "input_preprocessor.embeddings")
        _copy(adapter.positions.table, preprocessor.position_embeddings.weight, "input_preprocessor.position_embeddings")
    # Pixel and patch adapters in raw mode have no weights.


def _copy_encoder(perceiver: nn.Module, encoder: PerceiverEncoder) -> None:
    _copy(encoder.latents, perceiver.embeddings.latents, "embeddings.latents")
    _copy_layer(encoder.cross_attention_1, perceiver.encoder.cross_attention, "encoder.cross_attention")
    for i, (mine, theirs) in enumerate(zip(encoder.self_attention_1, perceiver.encoder.self_attends)):
        _copy_layer(mine, theirs, f"encoder.self_attends.{i}")


def _copy_decoder(hf_model: nn.Module, perceiver: nn.Module, decoder: PerceiverDecoder) -> None:
    hf_decoder = perceiver.decoder
    basic = hf_decoder.decoder if type(hf_decoder).__name__ == "PerceiverClassificationDecoder" else hf_decoder
    _copy_layer(decoder.cross_attention, basic.decoding_cross_attention, "decoder.decoding_cross_attention")
    table = basic.output_position_encodings.position_embeddings
    if isinstance(decoder.query_provider, ClassificationQuery):
        _copy(decoder.query_provider.query, table.reshape(1, 1, -1), "decoder.output_position_encodings")
        _copy_linear(decoder.output_adapter.linear, basic.final_layer, "decoder.final_layer")
    else:
        _copy(decoder.query_provider.positions.table, table, "decoder.output_position_encodings")
        bias = hf_model.embedding_decoder.bias
        _copy(decoder.output_adapter.bias, bias[hf_id_of_our_id().to(bias.device)], "embedding_decoder.bias")
