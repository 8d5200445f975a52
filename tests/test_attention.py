from types import SimpleNamespace

import pytest
import torch

from perceiver import attention as attention_module
from perceiver.attention import MultiHeadAttention, attend, attention_backend, resolve_backend


def reference_attention(q, k, v, pad_mask, scale):
    """Float64, one sample at a time, over only the keys that are not padding: independent of the masking tricks."""
    q, k, v = q.double(), k.double(), v.double()
    out = torch.zeros(*q.shape[:3], v.shape[-1], dtype=torch.float64)
    for b in range(q.shape[0]):
        keep = torch.ones(k.shape[2], dtype=torch.bool) if pad_mask is None else ~pad_mask[b]
        if keep.any():
            scores = q[b] @ k[b][:, keep].transpose(-1, -2) * scale
            out[b] = scores.softmax(dim=-1) @ v[b][:, keep]
    return out


def random_inputs(b=3, h=2, n=5, m=11, d_qk=8, d_v=8, dtype=torch.float32, seed=0):
    generator = torch.Generator().manual_seed(seed)
    q = torch.randn(b, h, n, d_qk, generator=generator, dtype=dtype)
    k = torch.randn(b, h, m, d_qk, generator=generator, dtype=dtype)
    v = torch.randn(b, h, m, d_v, generator=generator, dtype=dtype)
    pad_mask = torch.rand(b, m, generator=generator) < 0.4
    pad_mask[0] = True  # a sample whose keys are all padding
    pad_mask[1, 0] = False
    return q, k, v, pad_mask


@pytest.mark.parametrize("backend", ["sdpa", "math"])
@pytest.mark.parametrize("d_v", [8, 12])
def test_backends_match_float64_reference(backend, d_v):
    q, k, v, pad_mask = random_inputs(d_v=d_v)
    out = attend(q, k, v, pad_mask, backend=backend)
    expected = reference_attention(q, k, v, pad_mask, scale=8**-0.5)
    torch.testing.assert_close(out.double(), expected, rtol=1e-5, atol=1e-6)


def test_math_backend_is_exact_in_float64():
    q, k, v, pad_mask = random_inputs(dtype=torch.float64)
    out = attend(q, k, v, pad_mask, scale=0.3, backend="math")
    torch.testing.assert_close(out, reference_attention(q, k, v, pad_mask, scale=0.3), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("backend", ["sdpa", "math"])
def test_all_padding_sample_gives_zero_output_and_zero_finite_gradients(backend):
    q, k, v, pad_mask = random_inputs()
    for t in (q, k, v):
        t.requires_grad_(True)
    out = attend(q, k, v, pad_mask, backend=backend)
    assert torch.equal(out[0], torch.zeros_like(out[0]))
    (out * torch.randn_like(out)).sum().backward()
    for t in (q, k, v):
        assert torch.isfinite(t.grad).all()
        assert torch.equal(t.grad[0], torch.zeros_like(t.grad[0]))
    assert q.grad[1:].abs().sum() > 0


def test_gradients_of_sdpa_match_math_in_float64():
    q, k, v, pad_mask = random_inputs(dtype=torch.float64)
    grads = {}
    for backend in ("sdpa", "math"):
        leaves = [t.clone().requires_grad_(True) for t in (q, k, v)]
        attend(*leaves, pad_mask, backend=backend).pow(2).sum().backward()
        grads[backend] = [t.grad for t in leaves]
    for ours, reference in zip(grads["sdpa"], grads["math"]):
        torch.testing.assert_close(ours, reference, rtol=1e-10, atol=1e-10)


def test_auto_backend_is_sdpa_on_cpu_and_can_be_forced():
    q, k, v, pad_mask = random_inputs()
    assert resolve_backend(q, k, v, pad_mask) == "sdpa"
    with attention_backend("math"):
        assert resolve_backend(q, k, v, pad_mask) == "math"
        assert resolve_backend(q, k, v, pad_mask, backend="sdpa") == "sdpa"
    assert resolve_backend(q, k, v, pad_mask) == "sdpa"
    with pytest.raises(ValueError, match="backend"):
        attend(q, k, v, backend="fast")


@pytest.mark.parametrize("dtype, expected", [(torch.bfloat16, "triton"), (torch.float16, "triton"),
                                             (torch.float32, "sdpa")])
def test_auto_backend_sends_only_half_precision_cuda_calls_to_the_kernels(monkeypatch, dtype, expected):
    # A stand-in for a CUDA tensor that the kernels support, so that the rule is checked on any machine.
    monkeypatch.setattr(attention_module, "_triton_unsupported_reason", lambda *args: None)
    q = SimpleNamespace(is_cuda=True, dtype=dtype)
    assert resolve_backend(q, q, q) == expected
    assert resolve_backend(q, q, q, backend="triton") == "triton"


@pytest.mark.parametrize(
    "change, match",
    [
        (lambda q, k, v, m: (q[0], k, v, m), "q: expected a 4-D tensor"),
        (lambda q, k, v, m: (q, k[..., :4], v, m), r"k: expected shape \(3, 2, M, 8\)"),
        (lambda q, k, v, m: (q, k, v[:, :, :3], m), r"v: expected shape \(3, 2, 11, Dv\)"),
        (lambda q, k, v, m: (q, k, v, m[:, :4]), r"pad_mask: expected shape \(3, 11\), got \(3, 4\)"),
        (lambda q, k, v, m: (q, k, v, m.float()), "pad_mask: expected dtype torch.bool"),
        (lambda q, k, v, m: (q, k.double(), v, m), "q, k, v: expected one dtype"),
    ],
)
def test_bad_inputs_raise_clear_errors(change, match):
    with pytest.raises((ValueError, TypeError), match=match):
        attend(*change(*random_inputs()))


def test_multi_head_attention_ignores_padded_keys():
    torch.manual_seed(0)
    attention = MultiHeadAttention(num_heads=2, num_q_input_channels=6, num_kv_input_channels=5, num_qk_channels=4)
    x_q, x_kv = torch.randn(1, 3, 6), torch.randn(1, 7, 5)
    alone = attention(x_q, x_kv)
    padded_kv = torch.cat([x_kv, 100 * torch.randn(1, 4, 5)], dim=1)
    pad_mask = torch.tensor([[False] * 7 + [True] * 4])
    torch.testing.assert_close(attention(x_q, padded_kv, pad_mask), alone, rtol=1e-5, atol=1e-6)
    assert alone.shape == (1, 3, 6)
    with pytest.raises(ValueError, match=r"x_kv: expected shape \(B, length, 5\)"):
        attention(x_q, torch.randn(1, 7, 4))
    with pytest.raises(ValueError, match="num_qk_channels: expected a multiple of num_heads=3"):
        MultiHeadAttention(num_heads=3, num_q_input_channels=8, num_kv_input_channels=8)


def test_recorded_weights_equal_a_float64_recomputation_and_sum_to_one_over_unpadded_keys():
    from perceiver import PerceiverEncoder, record_attention

    torch.manual_seed(0)
    encoder = PerceiverEncoder(num_input_channels=6, num_latents=4, num_latent_channels=8, num_cross_attention_heads=2,
                               num_self_attention_heads=2, num_self_attention_layers_per_block=1,
                               num_self_attention_blocks=3)
    tokens = torch.randn(3, 7, 6)
    pad_mask = torch.zeros(3, 7, dtype=torch.bool)
    pad_mask[1, 4:] = True
    pad_mask[2, :] = True  # a sample with no real token: its weights are all 0
    expected = encoder(tokens, pad_mask)
    with record_attention(encoder) as calls:
        recorded_output = encoder(tokens, pad_mask)
    torch.testing.assert_close(recorded_output, expected, rtol=1e-5, atol=1e-5)
    # One cross-attend, the first block, then the later blocks' shared weights applied twice: one call per application.
    assert [call.name for call in calls] == ["cross_attention_1.attention", "self_attention_1.0.attention",
                                             "self_attention_n.0.attention", "self_attention_n.0.attention"]
    assert not calls[0].weights.requires_grad

    layer = encoder.cross_attention_1
    double = {name: p.detach().double() for name, p in layer.named_parameters()}
    latents = torch.nn.functional.layer_norm(encoder.latents.detach().double(), (8,), double["q_norm.weight"],
                                             double["q_norm.bias"])
    keys = torch.nn.functional.layer_norm(tokens.double(), (6,), double["kv_norm.weight"], double["kv_norm.bias"])
    q = (latents @ double["attention.q_proj.weight"].T + double["attention.q_proj.bias"]).reshape(4, 2, 4)
    k = (keys @ double["attention.k_proj.weight"].T + double["attention.k_proj.bias"]).reshape(3, 7, 2, 4)
    scores = torch.einsum("nhd,bmhd->bhnm", q, k) / 2.0
    reference = scores.masked_fill(pad_mask[:, None, None, :], float("-inf")).softmax(dim=-1).nan_to_num(0.0)
    weights = calls[0].weights
    assert weights.shape == (3, 2, 4, 7)
    torch.testing.assert_close(weights.double(), reference, rtol=1e-5, atol=1e-6)
    sums = weights.sum(dim=-1)
    torch.testing.assert_close(sums[:2], torch.ones_like(sums[:2]))
    assert (weights[1, ..., 4:] == 0).all() and (weights[2] == 0).all()


def test_recording_stops_at_the_end_of_the_block():
    from perceiver import record_attention

    attention = MultiHeadAttention(num_heads=1, num_q_input_channels=4, num_kv_input_channels=4)
    x = torch.randn(1, 3, 4)
    with record_attention(attention) as calls:
        attention(x, x)
    attention(x, x)
    assert len(calls) == 1 and calls[0].name == "" and calls[0].weights.shape == (1, 1, 3, 3)
