import json

import pytest
import torch
import torch.nn.functional as F

import perceiver.adapters
from perceiver.adapters import (
    ByteAdapter,
    ClassificationOutput,
    ClassificationQuery,
    ConvAdapter,
    LabelAdapter,
    MultimodalAdapter,
    PatchAdapter,
    ReconstructionOutput,
    ReconstructionQueries,
    SpectrogramAdapter,
    SpectrogramConvAdapter,
    TokenOutput,
    TokenQueries,
    gather_output_points,
    sample_output_index,
)
from perceiver.config import build_module, module_spec

E = 16  # decoder width of every query provider and output adapter below


def attend(queries, tokens, pad_mask, query_mask=None):
    """A stand-in for the decoder: queries (B, O, E) read tokens (B, M, C) with one cross-attention."""
    generator = torch.Generator().manual_seed(0)
    key_map = torch.randn(tokens.shape[-1], queries.shape[-1], generator=generator) / tokens.shape[-1] ** 0.5
    keys = tokens @ key_map
    allowed = None if pad_mask is None else ~pad_mask[:, None, :]
    out = queries + F.scaled_dot_product_attention(queries, keys, keys, attn_mask=allowed)
    return out if query_mask is None else out.masked_fill(query_mask[..., None], 0.0)


def byte_input():
    adapter = ByteAdapter(max_length=32, embed_channels=E)
    ids, _ = adapter.encode(["a text", "a longer text"])
    return adapter, ids, None


def image_input():
    return (
        PatchAdapter(in_channels=3, max_size=(16, 16), patch_size=4, embed_channels=8, num_bands=3),
        torch.randn(2, 3, 16, 8),
        None,
    )


def signal_input():
    adapter = PatchAdapter(in_channels=1, max_size=(64,), patch_size=8, embed_channels=8, positions="learned")
    pad_mask = torch.zeros(2, 48, dtype=torch.bool)
    pad_mask[0, 24:] = True
    return adapter, torch.randn(2, 1, 48), pad_mask


def audio_input():
    adapter = SpectrogramAdapter(
        sample_rate=8000,
        n_fft=64,
        hop_length=32,
        n_mels=8,
        max_duration=0.5,
        patch_size=4,
        embed_channels=8,
        num_bands=2,
    )
    pad_mask = torch.zeros(2, 1200, dtype=torch.bool)
    pad_mask[1, 500:] = True
    return adapter, torch.randn(2, 1200), pad_mask


def multimodal_input():
    text, ids, _ = byte_input()
    image, pixels, _ = image_input()
    adapter = MultimodalAdapter(adapters={"text": text, "image": image})
    return adapter, {"text": ids, "image": pixels, "image_present": torch.tensor([True, False])}, None


def conv_image_input():
    adapter = ConvAdapter(in_channels=3, max_size=(16, 16), channels=(4, 8), strides=(2, 2), num_bands=3)
    pad_mask = torch.zeros(2, 16, 8, dtype=torch.bool)
    pad_mask[1, 8:] = True
    return adapter, torch.randn(2, 3, 16, 8), pad_mask


def conv_audio_input():
    adapter = SpectrogramConvAdapter(sample_rate=8000, n_fft=64, hop_length=32, n_mels=8, max_duration=0.5,
                                     conv="time-mel", channels=(4, 6), strides=(1, 2), num_bands=2)
    pad_mask = torch.arange(3000)[None, :] >= torch.tensor([[3000], [1500]])
    return adapter, torch.randn(2, 3000), pad_mask


INPUTS = {
    "bytes": byte_input,
    "conv_image": conv_image_input,
    "conv_audio": conv_audio_input,
    "image": image_input,
    "signal": signal_input,
    "audio": audio_input,
    "multimodal": multimodal_input,
}


def classification_output(tokens):
    return (
        ClassificationQuery(num_channels=E),
        ClassificationOutput(num_channels=E, num_classes=5),
        {},
        (tokens.shape[0], 5),
    )


def token_output(tokens):
    queries = TokenQueries(max_length=512, num_channels=E, positions="fourier", num_bands=4)
    return queries, TokenOutput(num_channels=E, vocab_size=7), {}, (*tokens.shape[:2], 7)


def reconstruction_output(tokens):
    queries = ReconstructionQueries(output_shapes={"image": [4, 2], "audio": [9, 2]}, num_bands=3, num_channels=E)
    index = sample_output_index(18, 5, batch_size=tokens.shape[0])
    args = {"modality": "audio", "output_index": index}
    return queries, ReconstructionOutput(num_channels=E, num_values=12), args, (tokens.shape[0], 5, 12)


OUTPUTS = {"classification": classification_output, "tokens": token_output, "reconstruction": reconstruction_output}


@pytest.mark.parametrize("input_name", INPUTS)
@pytest.mark.parametrize("output_name", OUTPUTS)
def test_every_adapter_with_every_output_gives_shapes_and_gradients(input_name, output_name):
    adapter, x, pad_mask = INPUTS[input_name]()
    tokens, token_mask = adapter(x, pad_mask)
    provider, output, query_args, expected = OUTPUTS[output_name](tokens)
    queries, query_mask = provider(tokens, token_mask, **query_args)
    assert queries.shape[-1] == provider.num_channels
    result = output(attend(queries, tokens, token_mask, query_mask))
    assert result.shape == expected and torch.isfinite(result).all()
    result.square().mean().backward()
    for module in (adapter, provider, output):
        for name, parameter in module.named_parameters():
            assert parameter.grad is not None and torch.isfinite(parameter.grad).all(), name


# ---------------------------------------------------------------- classification


def test_classification_errors():
    with pytest.raises(ValueError, match=r"x: expected shape \(B, 1, 8\), got \(2, 3, 8\)"):
        ClassificationOutput(num_channels=8)(torch.zeros(2, 3, 8))
    with pytest.raises(ValueError, match=r"tokens: expected a 3-D tensor of shape \(B, M, C\), got shape \(2, 8\)"):
        ClassificationQuery(num_channels=8)(torch.zeros(2, 8))
    with pytest.raises(TypeError, match="unexpected keyword argument 'output_index'"):
        ClassificationQuery(num_channels=8)(torch.zeros(2, 3, 8), output_index=torch.zeros(1, dtype=torch.long))


# ---------------------------------------------------------------- per token


def test_token_queries_follow_the_input_length_and_mask():
    queries = TokenQueries(max_length=16, num_channels=8)
    pad_mask = torch.tensor([[False, False, True], [False, False, False]])
    out, mask = queries(torch.zeros(2, 3, 5), pad_mask)
    assert out.shape == (2, 3, 8) and mask is pad_mask
    torch.testing.assert_close(out[0], queries.positions.table[:3], atol=0, rtol=0)
    raw = TokenQueries(max_length=16, num_channels=None, positions="fourier", num_bands=4)
    assert raw.num_channels == 9 and raw(torch.zeros(1, 5, 3))[0].shape == (1, 5, 9)
    with pytest.raises(ValueError, match="tokens: expected at most max_length=16 tokens, got M=17"):
        queries(torch.zeros(1, 17, 5))
    with pytest.raises(ValueError, match=r"pad_mask: expected shape \(2, 3\), got \(2, 4\)"):
        queries(torch.zeros(2, 3, 5), torch.zeros(2, 4, dtype=torch.bool))


def test_token_queries_decode_only_the_indexed_positions():
    torch.manual_seed(0)
    queries = TokenQueries(max_length=16, num_channels=8, token_channels=5, context=2)
    tokens = torch.randn(2, 6, 5)
    pad_mask = torch.tensor([[False] * 6, [False] * 4 + [True] * 2])
    every, every_mask = queries(tokens, pad_mask)
    index = torch.tensor([[1, 3, 0], [5, 0, 0]])
    filler = torch.tensor([[False, False, True], [False, False, True]])
    some, some_mask = queries(tokens, pad_mask, index=index, index_pad_mask=filler)
    assert some.shape == (2, 3, 8) and every_mask is pad_mask
    torch.testing.assert_close(some, every[torch.arange(2)[:, None], index])
    # Filler entries and indexed padding are masked.
    assert some_mask.tolist() == [[False, False, True], [True, False, True]]
    with pytest.raises(ValueError, match=r"index: expected positions in \[0, 6\), got values in \[0, 6\]"):
        queries(tokens, pad_mask, index=torch.tensor([[6], [0]]))
    with pytest.raises(ValueError, match="index_pad_mask: expected None without an index"):
        queries(tokens, pad_mask, index_pad_mask=filler)


def test_token_queries_read_the_neighbouring_tokens_only():
    torch.manual_seed(0)
    queries = TokenQueries(max_length=16, num_channels=8, token_channels=5, context=1)
    tokens = torch.randn(1, 6, 5)
    base, _ = queries(tokens)
    changed = tokens.clone()
    changed[0, 3] += 1.0
    moved = queries(changed)[0] - base
    assert moved[0, 2:5].abs().amax(dim=1).min() > 0  # positions 2, 3 and 4 read token 3
    assert moved[0, [0, 1, 5]].abs().max() == 0
    # Beyond the input and at padding a query reads zeros, so padding never changes a real query.
    padded = torch.cat([tokens, torch.randn(1, 3, 5)], dim=1)
    pad_mask = torch.tensor([[False] * 6 + [True] * 3])
    torch.testing.assert_close(queries(padded, pad_mask)[0][:, :6], base)
    positions_only = TokenQueries(max_length=16, num_channels=8)
    assert positions_only.token_projection is None
    with pytest.raises(ValueError, match="token_channels: expected None, or a positive int with an int num_channels"):
        TokenQueries(max_length=16, num_channels=None, positions="fourier", token_channels=5)
    with pytest.raises(ValueError, match="context: expected a non-negative int, got -1"):
        TokenQueries(max_length=16, num_channels=8, token_channels=5, context=-1)


def test_tied_token_output_uses_the_byte_embedding():
    adapter = ByteAdapter(max_length=8, embed_channels=6).double()
    output = TokenOutput(num_channels=6, tied=True).double()
    with pytest.raises(RuntimeError, match="tie_to"):
        output(torch.zeros(1, 2, 6, dtype=torch.float64))
    output.tie_to(adapter)
    with torch.no_grad():
        output.bias.normal_()
    x = torch.randn(2, 3, 6, dtype=torch.float64)
    logits = output(x)
    expected = torch.einsum("bmc,vc->bmv", x, adapter.embedding.weight) + output.bias
    torch.testing.assert_close(logits, expected, atol=1e-12, rtol=0)
    logits.sum().backward()
    assert adapter.embedding.weight.grad is not None and list(output.state_dict()) == ["bias"]
    with pytest.raises(ValueError, match=r"source: expected an embedding weight of shape \(260, 6\), got \(260, 4\)"):
        output.tie_to(ByteAdapter(embed_channels=4))
    with pytest.raises(ValueError, match="tie_to: this TokenOutput was built with tied=False"):
        TokenOutput(num_channels=6).tie_to(adapter)
    with pytest.raises(ValueError, match=r"x: expected 6 channels \(B, M, 6\), got \(1, 2, 5\)"):
        output(torch.zeros(1, 2, 5, dtype=torch.float64))


# ---------------------------------------------------------------- reconstruction


def test_subsampled_queries_are_rows_of_the_full_queries():
    provider = ReconstructionQueries(output_shapes={"image": [3, 4], "audio": [5]}, num_bands=2, modality_channels=3)
    tokens = torch.zeros(2, 7, 5)
    everything, mask = provider(tokens)
    image, _ = provider(tokens, modality="image")
    audio, _ = provider(tokens, modality="audio")
    assert mask is None and everything.shape == (2, 12 + 5, provider.num_channels) == (2, 17, 2 * 5 + 3)
    torch.testing.assert_close(everything, torch.cat([image, audio], dim=1), atol=0, rtol=0)
    # The widest Fourier width is the image's (2 dims); audio's (1 dim) is zero-padded, then the modality embedding.
    assert audio[..., 5:10].eq(0).all()
    torch.testing.assert_close(audio[0, :, 10:], provider.modality_embedding[1].expand(5, 3), atol=0, rtol=0)
    shared = sample_output_index(12, 4)
    torch.testing.assert_close(
        provider(tokens, modality="image", output_index=shared)[0], image[:, shared], atol=0, rtol=0
    )
    per_sample = sample_output_index(12, 4, batch_size=2)
    subset, _ = provider(tokens, modality="image", output_index=per_sample)
    torch.testing.assert_close(subset, gather_output_points(image, per_sample), atol=0, rtol=0)


def test_sample_output_index_draws_distinct_points():
    index = sample_output_index(50, 20, batch_size=3, generator=torch.Generator().manual_seed(1))
    assert index.shape == (3, 20) and all(len(set(row)) == 20 for row in index.tolist())
    assert int(index.min()) >= 0 and int(index.max()) < 50
    assert sorted(sample_output_index(6, 6).tolist()) == list(range(6))
    with pytest.raises(ValueError, match="num_samples: expected between 1 and num_points=6, got 7"):
        sample_output_index(6, 7)


def test_gather_output_points_picks_targets():
    values = torch.arange(2 * 4 * 3, dtype=torch.float32).reshape(2, 4, 3)
    index = torch.tensor([[3, 0], [1, 1]])
    picked = gather_output_points(values, index)
    assert torch.equal(picked[0, 0], values[0, 3]) and torch.equal(picked[1, 1], values[1, 1])
    assert torch.equal(gather_output_points(values, torch.tensor([2])), values[:, 2:3])


def test_reconstruction_errors():
    provider = ReconstructionQueries(output_shapes={"image": [3, 4], "audio": [5]}, num_bands=2)
    tokens = torch.zeros(2, 7, 5)
    with pytest.raises(ValueError, match=r"modality: expected one of \['image', 'audio'\] or None, got 'video'"):
        provider(tokens, modality="video")
    with pytest.raises(ValueError, match="modality: output_index needs one modality"):
        provider(tokens, output_index=torch.tensor([0]))
    with pytest.raises(ValueError, match=r"output_index: expected flat positions in \[0, 5\)"):
        provider(tokens, modality="audio", output_index=torch.tensor([5]))
    with pytest.raises(ValueError, match=r"output_index: expected \(K,\) or \(2, K\), got \(3, 2\)"):
        provider(tokens, modality="audio", output_index=torch.zeros(3, 2, dtype=torch.long))
    with pytest.raises(TypeError, match="output_index: expected an integer tensor"):
        provider(tokens, modality="audio", output_index=torch.zeros(2))
    with pytest.raises(ValueError, match=r"x: expected 8 channels \(B, K, 8\), got \(1, 2, 3\)"):
        ReconstructionOutput(num_channels=8, num_values=4)(torch.zeros(1, 2, 3))


# ---------------------------------------------------------------- config round trip


def run_module(module, seed=0):
    """The output of any registered module on a small input of its kind."""
    torch.manual_seed(seed)  # the inputs below are random; both calls must see the same ones
    generator = torch.Generator().manual_seed(seed)
    name = type(module).__name__
    for input_name, make in INPUTS.items():
        adapter, x, pad_mask = make()
        if type(adapter).__name__ == name and (name != "PatchAdapter" or adapter.num_dims == module.num_dims):
            return module(x, pad_mask)[0]
    if name in ("ClassificationQuery", "TokenQueries", "ReconstructionQueries"):
        return module(torch.randn(2, 5, 7, generator=generator))[0]
    if name == "LabelAdapter":
        return module(torch.randint(0, module.num_classes, (4,), generator=generator))[0]
    return module(torch.randn(2, 1, module.num_channels, generator=generator))


def round_trip_cases():
    tied = TokenOutput(num_channels=E, tied=True)
    tied.tie_to(ByteAdapter(embed_channels=E))
    return [
        byte_input()[0],
        ByteAdapter(max_length=32, embed_channels=E, positions="fourier", num_bands=4),
        image_input()[0],
        signal_input()[0],
        audio_input()[0],
        conv_image_input()[0],
        conv_audio_input()[0],
        multimodal_input()[0],
        ClassificationQuery(num_channels=E),
        ClassificationOutput(num_channels=E, num_classes=3),
        TokenQueries(max_length=16, num_channels=E),
        TokenQueries(max_length=16, num_channels=E, token_channels=7, context=2),
        TokenOutput(num_channels=E, vocab_size=11),
        tied,
        ReconstructionQueries(output_shapes={"a": [3, 2], "b": [4]}, num_bands=2, num_channels=E),
        ReconstructionOutput(num_channels=E, num_values=6),
        LabelAdapter(num_classes=4, num_channels=E),
    ]


def exported_modules() -> set[str]:
    bases = (perceiver.adapters.InputAdapter, perceiver.adapters.QueryProvider, perceiver.adapters.OutputAdapter)
    exported = (getattr(perceiver.adapters, name) for name in perceiver.adapters.__all__)
    return {cls.__name__ for cls in exported if isinstance(cls, type) and issubclass(cls, bases) and cls not in bases}


def test_every_exported_adapter_has_a_round_trip_case():
    assert {type(module).__name__ for module in round_trip_cases()} == exported_modules()


@pytest.mark.parametrize("index", range(len(round_trip_cases())))
def test_config_round_trip(index):
    module = round_trip_cases()[index]
    spec = json.loads(json.dumps(module_spec(module)))
    rebuilt = build_module(spec)
    if getattr(module, "tied", False):
        rebuilt.tie_to(module._tied_embedding[0])
    shapes = {name: tensor.shape for name, tensor in module.state_dict().items()}
    assert {name: tensor.shape for name, tensor in rebuilt.state_dict().items()} == shapes
    assert sum(p.numel() for p in rebuilt.parameters()) == sum(p.numel() for p in module.parameters())
    assert getattr(rebuilt, "num_channels", None) == getattr(module, "num_channels", None)
    rebuilt.load_state_dict(module.state_dict())
    torch.testing.assert_close(run_module(rebuilt), run_module(module), atol=0, rtol=0)


def test_build_module_errors():
    with pytest.raises(ValueError, match=r"spec\['type'\]: expected an importable nn.Module class"):
        build_module({"type": "Linear", "config": {}})
    with pytest.raises(ValueError, match=r"spec\['type'\]: expected an importable nn.Module class"):
        build_module({"type": "perceiver.adapters.NoSuchAdapter", "config": {}})
    with pytest.raises(TypeError, match="Linear has no `config` attribute"):
        module_spec(torch.nn.Linear(2, 2))
