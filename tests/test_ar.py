"""Perceiver AR: causality, padding, prefix dropout, exact cached generation, sampling, errors, save and load."""

import pytest
import torch

import perceiver.ar as ar
from perceiver import PerceiverAR
from perceiver.ar import sample_next
from perceiver.builders import perceiver_ar


def small_model(positions="rotary", **kwargs):
    torch.manual_seed(0)
    options = dict(vocab_size=256, max_seq_len=24, num_latents=6, num_channels=16, num_heads=2,
                   num_self_attention_layers=2, widening_factor=2, positions=positions, prefix_dropout=0.5)
    options.update(kwargs)
    return PerceiverAR(**options).double().eval()


def ids(*shape, seed=0):
    return torch.randint(0, 256, shape, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("positions", ["rotary", "learned"])
def test_logits_depend_on_the_past_only(positions):
    model = small_model(positions)
    x = ids(2, 20)
    logits = model(x)
    assert logits.shape == (2, 6, 256)
    later = x.clone()
    later[:, 17] = (later[:, 17] + 1) % 256  # the token of latent 3 (positions 14..19 are latents)
    changed = model(later)
    torch.testing.assert_close(changed[:, :3], logits[:, :3], rtol=0, atol=0)
    assert not torch.allclose(changed[:, 3:], logits[:, 3:])
    earlier = x.clone()
    earlier[:, 2] = (earlier[:, 2] + 1) % 256  # a prefix token: every latent reads it
    assert not torch.allclose(model(earlier), logits)


@pytest.mark.parametrize("positions", ["rotary", "learned"])
def test_left_padding_does_not_change_a_sample(positions):
    model = small_model(positions)
    x = ids(1, 15)
    padded = torch.cat([torch.zeros(1, 5, dtype=torch.long), x], dim=1)
    pad_mask = torch.zeros(1, 20, dtype=torch.bool)
    pad_mask[:, :5] = True
    torch.testing.assert_close(model(padded, pad_mask), model(x), rtol=1e-10, atol=1e-12)


def test_num_latents_sets_the_window_and_the_last_latent_sees_the_whole_prefix():
    model = small_model()
    x = ids(2, 20)
    assert model(x, num_latents=3).shape == (2, 3, 256)
    assert model(x[:, :4]).shape == (2, 4, 256)  # fewer ids than latents: every id is a latent
    # The first latent of a window reads the prefix and itself only: with 1 latent it gives the same logits.
    torch.testing.assert_close(model(x, num_latents=6)[:, 0], model(x[:, :15], num_latents=1)[:, 0])


def test_prefix_dropout_is_random_in_training_only():
    model = small_model()
    x = ids(2, 24)
    torch.testing.assert_close(model(x), model(x), rtol=0, atol=0)
    model.train()
    torch.manual_seed(1)
    first = model(x)
    torch.manual_seed(2)
    assert not torch.allclose(model(x), first)
    off = small_model(prefix_dropout=0.0).train()
    torch.testing.assert_close(off(x), off.eval()(x), rtol=0, atol=0)
    # Training still works end to end: a loss on every latent gets a gradient into the embedding.
    model.train()
    loss = torch.nn.functional.cross_entropy(model(x[:, :-1]).flatten(0, 1), x[:, -6:].flatten())
    loss.backward()
    assert model.embedding.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("positions", ["rotary", "learned"])
@pytest.mark.parametrize("prompt_length, stride", [(3, None), (10, 2), (24, 6), (1, 1)])
def test_cached_generation_gives_the_uncached_logits_and_bytes(monkeypatch, positions, prompt_length, stride):
    model = small_model(positions)
    seen = {True: [], False: []}
    for use_cache in (True, False):
        def record(logits, _log=seen[use_cache], **kwargs):
            _log.append(logits.clone())
            return original(logits, **kwargs)

        original = sample_next
        monkeypatch.setattr(ar, "sample_next", record)
        # 40 new ids: the window of 24 and the 6 latents are rebuilt several times.
        out = model.generate(ids(2, prompt_length), 40, generator=torch.Generator().manual_seed(3),
                             use_cache=use_cache, stride=stride)
        seen[use_cache].append(out)
        monkeypatch.setattr(ar, "sample_next", original)
    *cached_logits, cached_out = seen[True]
    *plain_logits, plain_out = seen[False]
    assert len(cached_logits) == len(plain_logits) == 40
    for cached, plain in zip(cached_logits, plain_logits):
        torch.testing.assert_close(cached, plain, rtol=1e-10, atol=1e-10)
    assert torch.equal(cached_out, plain_out)
    assert cached_out.shape == (2, prompt_length + 40)
    assert torch.equal(cached_out[:, :prompt_length], ids(2, prompt_length))


def test_first_generated_logits_are_the_forward_of_the_prompt(monkeypatch):
    model = small_model()
    prompt = ids(1, 20)
    logged = []
    monkeypatch.setattr(ar, "sample_next", lambda logits, **kw: (logged.append(logits), logits.argmax(-1))[1])
    out = model.generate(prompt[0], 1, temperature=0)
    assert out.shape == (21,)
    torch.testing.assert_close(logged[0], model(prompt)[:, -1])
    assert out[-1] == model(prompt)[0, -1].argmax()


def test_generation_is_reproducible_with_a_generator_and_leaves_training_mode_alone():
    model = small_model().train()
    a = model.generate(ids(1, 5), 12, generator=torch.Generator().manual_seed(0), top_k=20, top_p=0.9)
    b = model.generate(ids(1, 5), 12, generator=torch.Generator().manual_seed(0), top_k=20, top_p=0.9)
    assert torch.equal(a, b) and model.training


def test_sample_next_greedy_top_k_and_top_p():
    logits = torch.tensor([[0.0, 3.0, 1.0, 2.9], [5.0, 0.0, 0.0, 0.0]])
    assert sample_next(logits, temperature=0).tolist() == [1, 0]
    generator = torch.Generator().manual_seed(0)
    for _ in range(20):
        assert sample_next(logits, top_k=1, generator=generator).tolist() == [1, 0]
        assert sample_next(logits, top_p=0.01, generator=generator).tolist() == [1, 0]
        assert sample_next(logits, top_k=2, generator=generator)[0].item() in (1, 3)
    # top_p keeps the smallest set that reaches p: ids 1 and 3 together hold > 0.8 of the mass of row 0.
    draws = {sample_next(logits, top_p=0.8, generator=generator)[0].item() for _ in range(200)}
    assert draws == {1, 3}


@pytest.mark.parametrize("call, match", [
    (lambda m: m.generate(ids(1, 25), 1), r"prompt_ids: expected at most max_seq_len=24 ids .*got 25"),
    (lambda m: m.generate(torch.zeros(0, dtype=torch.long), 1), "prompt_ids: expected at least one id.*empty"),
    (lambda m: m.generate(torch.zeros(2, 3), 1), "prompt_ids: expected an integer tensor"),
    (lambda m: m.generate(torch.tensor([1, 300]), 1), r"prompt_ids: expected ids in \[0, 256\), got values in \[1, 300\]"),
    (lambda m: m.generate(ids(1, 3), -1), "max_new_tokens: expected an int >= 0, got -1"),
    (lambda m: m.generate(ids(1, 3), 1, temperature=-0.5), "temperature: expected a finite float >= 0.*got -0.5"),
    (lambda m: m.generate(ids(1, 3), 1, temperature=float("nan")), "temperature: expected .* got nan"),
    (lambda m: m.generate(ids(1, 3), 1, top_k=0), r"top_k: expected None or an int in \[1, vocab_size=256\], got 0"),
    (lambda m: m.generate(ids(1, 3), 1, top_k=257), "top_k: .* got 257"),
    (lambda m: m.generate(ids(1, 3), 1, top_p=0.0), r"top_p: expected None or a float in \(0, 1\], got 0.0"),
    (lambda m: m.generate(ids(1, 3), 1, top_p=1.5), "top_p: .* got 1.5"),
    (lambda m: m.generate(ids(1, 3), 1, stride=7), r"stride: expected an int in \[1, num_latents=6\], got 7"),
    (lambda m: m(ids(1, 25)), "x: expected a length L between 1 and max_seq_len=24, got 25"),
    (lambda m: m(ids(1, 5), num_latents=0), r"num_latents: expected an int in \[1, max_seq_len=24\], got 0"),
])
def test_bad_arguments_raise_clear_errors(call, match):
    with pytest.raises(ValueError, match=match):
        call(small_model())


@pytest.mark.parametrize("kwargs, match", [
    (dict(num_latents=30), "num_latents: expected at most max_seq_len=24, got 30"),
    (dict(positions="fourier"), r"positions: expected one of \('rotary', 'learned'\), got 'fourier'"),
    (dict(prefix_dropout=1.0), r"prefix_dropout: expected a fraction in \[0, 1\), got 1.0"),
    (dict(num_heads=3), "num_channels: expected a multiple of num_heads=3, got 16"),
    (dict(num_channels=6, num_heads=2), "expected an even head width for rotary positions"),
    (dict(vocab_size=0), "vocab_size: expected a positive int, got 0"),
])
def test_bad_constructor_arguments_raise_clear_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        small_model(**kwargs)


@pytest.mark.parametrize("positions", ["rotary", "learned"])
def test_save_and_load_round_trip(tmp_path, positions):
    model = small_model(positions)
    model.save_pretrained(tmp_path / "ar")
    loaded = PerceiverAR.from_pretrained(tmp_path / "ar").double().eval()
    assert loaded.config == model.config
    x = ids(2, 24)
    torch.testing.assert_close(loaded(x), model(x))


def test_builder_gives_perceiver_ar_or_a_gpt_of_the_same_layers():
    gpt = perceiver_ar(max_seq_len=16, num_channels=16, num_heads=2, num_self_attention_layers=1)
    assert gpt.num_latents == 16 and gpt.prefix_dropout == 0.0
    assert gpt(ids(1, 16)).shape == (1, 16, 256)
    model = perceiver_ar(max_seq_len=64, num_latents=8, num_channels=16, num_heads=2, num_self_attention_layers=1)
    assert sum(p.numel() for p in model.parameters()) == sum(p.numel() for p in gpt.parameters())


def test_a_tiny_model_learns_a_periodic_sequence():
    torch.manual_seed(0)
    model = perceiver_ar(max_seq_len=32, num_latents=8, num_channels=32, num_heads=2, num_self_attention_layers=1)
    pattern = torch.tensor(list(b"abcdefg") * 10)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for step in range(60):
        start = int(torch.randint(0, 30, ()))
        window = pattern[start:start + 33][None]
        loss = torch.nn.functional.cross_entropy(model(window[:, :-1]).flatten(0, 1), window[0, -8:])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert loss.item() < 0.5
    out = model.generate(torch.tensor(list(b"abcdefgabc")), 10, temperature=0)
    assert bytes(out.tolist()[10:]) == b"defgabcdef"


def test_rotary_scores_depend_on_relative_positions_only():
    from perceiver.positions import RotaryEmbedding

    rotary = RotaryEmbedding(num_channels=6)
    generator = torch.Generator().manual_seed(0)
    q, k = (torch.randn(1, 2, 5, 8, generator=generator, dtype=torch.float64) for _ in range(2))
    positions = torch.tensor([0, 3, 4, 9, 10])
    scores = rotary(q, positions) @ rotary(k, positions).transpose(-1, -2)
    shifted = rotary(q, positions + 100) @ rotary(k, positions + 100).transpose(-1, -2)
    torch.testing.assert_close(shifted, scores, rtol=1e-9, atol=1e-9)
    assert not torch.allclose(scores, q @ k.transpose(-1, -2))
    torch.testing.assert_close(rotary(q, positions)[..., 6:], q[..., 6:])  # channels beyond num_channels pass
    with pytest.raises(ValueError, match="num_channels: expected a positive even int, got 5"):
        RotaryEmbedding(num_channels=5)
