"""Causal attention (queries aligned with the last keys) of ``attend`` and the attention layers, against float64."""

import os

import pytest
import torch

from perceiver import SelfAttentionLayer, attend
from perceiver.attention import MultiHeadAttention, causal_mask


def causal_reference(q, k, v, pad_mask, scale):
    """Float64, one sample and query at a time, over only the keys that query may see: j <= i + M - N, unpadded."""
    q, k, v = q.double(), k.double(), v.double()
    n, m = q.shape[2], k.shape[2]
    out = torch.zeros(*q.shape[:3], v.shape[-1], dtype=torch.float64)
    for b in range(q.shape[0]):
        for i in range(n):
            keep = torch.arange(m) <= i + m - n
            if pad_mask is not None:
                keep &= ~pad_mask[b]
            if keep.any():
                scores = torch.einsum("hd,hkd->hk", q[b, :, i], k[b][:, keep]) * scale
                out[b, :, i] = torch.einsum("hk,hkd->hd", scores.softmax(dim=-1), v[b][:, keep])
    return out


def inputs(n, m, *, padded=True, dtype=torch.float64, seed=0):
    generator = torch.Generator().manual_seed(seed)
    q = torch.randn(3, 2, n, 8, generator=generator, dtype=dtype)
    k = torch.randn(3, 2, m, 8, generator=generator, dtype=dtype)
    v = torch.randn(3, 2, m, 6, generator=generator, dtype=dtype)
    if not padded:
        return q, k, v, None
    pad_mask = torch.rand(3, m, generator=generator) < 0.3
    pad_mask[0] = True  # every key of sample 0 is padding
    pad_mask[1, :] = False
    pad_mask[2, -1] = True  # the last key padded: the first queries of sample 2 may see only padding
    return q, k, v, pad_mask


def test_causal_mask_aligns_queries_with_the_last_keys():
    assert causal_mask(2, 4).tolist() == [[False, False, False, True], [False, False, False, False]]
    assert causal_mask(3, 3).tolist() == [[False, True, True], [False, False, True], [False, False, False]]
    # More queries than keys: query 0 sees no key at all.
    assert causal_mask(3, 2).tolist() == [[True, True], [False, True], [False, False]]


@pytest.mark.parametrize("backend", ["math", "sdpa"])
@pytest.mark.parametrize("n, m", [(7, 7), (4, 11), (1, 9), (5, 1), (1, 1), (6, 3)])
@pytest.mark.parametrize("padded", [False, True])
def test_causal_backends_match_float64_reference(backend, n, m, padded):
    q, k, v, pad_mask = inputs(n, m, padded=padded)
    out = attend(q, k, v, pad_mask, causal=True, backend=backend)
    torch.testing.assert_close(out, causal_reference(q, k, v, pad_mask, scale=8**-0.5), rtol=1e-10, atol=1e-12)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("backend", ["math", "sdpa"])
def test_causal_float32_matches_float64_reference(backend):
    q, k, v, pad_mask = inputs(5, 9, dtype=torch.float32)
    out = attend(q, k, v, pad_mask, causal=True, backend=backend)
    torch.testing.assert_close(out.double(), causal_reference(q, k, v, pad_mask, 8**-0.5), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("backend", ["math", "sdpa"])
@pytest.mark.parametrize("n, m", [(4, 11), (6, 3), (5, 5)])
def test_causal_gradients_match_reference_and_vanish_for_blind_queries(backend, n, m):
    q, k, v, pad_mask = inputs(n, m)
    grads = []
    for fn in (lambda *t: attend(*t, pad_mask, causal=True, backend=backend),
               lambda *t: causal_reference(*t, pad_mask, 8**-0.5)):
        leaves = [t.clone().requires_grad_() for t in (q, k, v)]
        out = fn(*leaves)
        out.backward(torch.cos(torch.arange(out.numel(), dtype=torch.float64)).reshape(out.shape))
        grads.append([t.grad for t in leaves])
    for got, expected in zip(*grads):
        assert torch.isfinite(got).all()
        torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-12)
    # A query that sees no unpadded key has a zero gradient (sample 0: all padding; N > M: the first queries).
    dq = grads[0][0]
    assert (dq[0] == 0).all()
    for i in range(max(0, n - m)):
        assert (dq[:, :, i] == 0).all()


def test_causal_changes_the_result_and_false_is_the_default():
    q, k, v, _ = inputs(4, 6, padded=False)
    assert not torch.allclose(attend(q, k, v, causal=True), attend(q, k, v))
    torch.testing.assert_close(attend(q, k, v, causal=False), attend(q, k, v))
    with pytest.raises(TypeError, match="causal: expected a bool"):
        attend(q, k, v, causal="yes")


def test_auto_backend_passes_causal_to_kernels_that_accept_it(monkeypatch):
    import perceiver.attention as attention

    calls = []

    class NewKernels:
        @staticmethod
        def attention(q, k, v, pad_mask=None, scale=None, *, causal=False, num_splits=None):
            calls.append(causal)
            return attention._math_attention(q, k, v, pad_mask, scale, causal)

        @staticmethod
        def unsupported_reason(q, k, v, pad_mask=None):
            return None

    monkeypatch.setattr(attention, "_triton_kernels", lambda: NewKernels)
    q, k, _, pad_mask = inputs(3, 5)
    v = k.flip(-1)  # the kernels need equal qk and v head dims
    out = attend(q, k, v, pad_mask, causal=True, backend="triton")
    assert calls == [True]
    torch.testing.assert_close(out, causal_reference(q, k, v, pad_mask, 8**-0.5))


def test_causal_self_attention_layer_ignores_the_future():
    torch.manual_seed(0)
    layer = SelfAttentionLayer(num_heads=2, num_channels=8, causal=True).double()
    x = torch.randn(2, 6, 8, dtype=torch.float64)
    changed = x.clone()
    changed[:, 4:] += 1.0  # only the last two tokens change
    out, out_changed = layer(x), layer(changed)
    torch.testing.assert_close(out[:, :4], out_changed[:, :4], rtol=0, atol=0)
    assert not torch.allclose(out[:, 4:], out_changed[:, 4:])


def test_multi_head_attention_steps_compose_to_forward():
    torch.manual_seed(0)
    attention = MultiHeadAttention(num_heads=2, num_q_input_channels=8, num_kv_input_channels=6, causal=True).double()
    x_q, x_kv = torch.randn(2, 3, 8, dtype=torch.float64), torch.randn(2, 7, 6, dtype=torch.float64)
    q = attention.project_queries(x_q)
    k, v = attention.project_keys_values(x_kv)
    assert q.shape == (2, 2, 3, 4) and k.shape == v.shape == (2, 2, 7, 4)
    torch.testing.assert_close(attention.attend_heads(q, k, v), attention(x_q, x_kv))


@pytest.mark.parametrize("n, m", [(5, 5), (3, 9), (1, 7)])
def test_triton_backend_runs_causal_calls_through_the_kernels(n, m):
    pytest.importorskip("triton")
    if not torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("the kernels need CUDA or TRITON_INTERPRET=1")
    q, k, v, pad_mask = inputs(n, m, dtype=torch.float32)
    v = torch.randn(*k.shape, generator=torch.Generator().manual_seed(1))  # the kernels take equal qk and v head dims
    scale = 8 ** -0.5
    out = attend(q, k, v, pad_mask, causal=True, backend="triton")
    torch.testing.assert_close(out.double(), causal_reference(q, k, v, pad_mask, scale), atol=1e-5, rtol=1e-4)
