"""The fused Triton attention kernels against a float64 reference.

Without CUDA they run under ``TRITON_INTERPRET=1`` (see ``conftest.py``), which is slow: shapes are tiny, but chosen
so that lengths are not multiples of the blocks (16 under the interpreter), head dims are not powers of two, and N or
M can be 1. The interpreter cannot run bf16 dots, so bf16 is tested on CUDA only. Causal masks are checked against
the same reference with N = M, N < M, N > M (queries that see no key), N = 1 and M = 1, with and without padding.
"""

import math

import pytest
import torch

import perceiver
from perceiver.kernels import attention, num_splits_heuristic, unsupported_reason
from perceiver.kernels.runtime import INTERPRET, length_bucket

if not INTERPRET and not torch.cuda.is_available():
    pytest.skip("the kernels need CUDA or TRITON_INTERPRET=1 (it was set to 0)", allow_module_level=True)

DEVICE = "cpu" if INTERPRET else "cuda"
DTYPES = [torch.float32, torch.float16] + ([] if INTERPRET else [torch.bfloat16])
# (rtol, atol) against float64, for outputs and gradients.
TOLERANCES = {torch.float32: (1e-4, 1e-5), torch.float16: (1e-2, 1e-2), torch.bfloat16: (5e-2, 5e-2)}


def reference_attention(q, k, v, pad_mask, scale, causal=False):
    """Float64 softmax over the keys each query sees: unpadded and, if causal, j <= i + M - N (queries aligned with
    the last keys). A query that sees no key gets 0. Differentiable, without NaN."""
    n, m = q.shape[2], k.shape[2]
    visible = torch.ones(n, m, dtype=torch.bool)
    if causal:
        visible = torch.arange(m)[None, :] <= torch.arange(n)[:, None] + (m - n)
    visible = visible.expand(q.shape[0], 1, n, m)
    if pad_mask is not None:
        visible = visible & ~pad_mask.cpu()[:, None, None, :]
    scores = (q @ k.transpose(-1, -2) * scale).masked_fill(~visible, float("-inf"))
    # A row with no visible key takes the softmax of zeros (not of -inf: NaN) and is then zeroed by the mask.
    sees_a_key = visible.any(dim=-1, keepdim=True)
    probs = scores.masked_fill(~sees_a_key, 0.0).softmax(dim=-1) * visible
    return probs @ v


def make_inputs(b, h, n, m, d, dtype, *, masked=True, seed=0):
    generator = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(b, h, length, d, generator=generator) for length in (n, m, m))
    pad_mask = None
    if masked:
        pad_mask = torch.rand(b, m, generator=generator) < 0.3
        pad_mask[:, 0] = False
        if b > 1:
            pad_mask[-1] = True  # a sample whose keys are all padding
        pad_mask = pad_mask.to(DEVICE)
    d_out = torch.randn(b, h, n, d, generator=generator)
    return [t.to(DEVICE, dtype) for t in (q, k, v, d_out)], pad_mask


def run_both(q, k, v, d_out, pad_mask, *, scale=None, causal=False, num_splits=None):
    """(output, dq, dk, dv) of the kernels and of the float64 reference."""
    leaves = [t.detach().clone().requires_grad_(True) for t in (q, k, v)]
    out = attention(*leaves, pad_mask, scale=scale, causal=causal, num_splits=num_splits)
    out.backward(d_out)
    ours = [out.detach()] + [t.grad for t in leaves]

    reference_leaves = [t.detach().cpu().double().requires_grad_(True) for t in (q, k, v)]
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    reference = reference_attention(*reference_leaves, pad_mask, scale, causal)
    reference.backward(d_out.cpu().double())
    return ours, [reference.detach()] + [t.grad for t in reference_leaves]


def assert_matches_reference(ours, reference, dtype):
    rtol, atol = TOLERANCES[dtype]
    for name, a, r in zip(("out", "dq", "dk", "dv"), ours, reference):
        assert a.dtype == dtype, name
        assert torch.isfinite(a).all(), name
        torch.testing.assert_close(a.cpu().double(), r, rtol=rtol, atol=atol, msg=lambda m: f"{name}: {m}")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    "b, h, n, m, d",
    [
        (2, 2, 17, 33, 24),  # lengths past a block boundary, head dim not a power of two
        (2, 1, 1, 20, 40),  # one query
        (1, 2, 5, 1, 16),  # one key
        (3, 1, 3, 7, 8),  # head dim below the 16-wide dot tile
    ],
)
def test_forward_and_gradients_match_float64_reference(b, h, n, m, d, dtype):
    (q, k, v, d_out), pad_mask = make_inputs(b, h, n, m, d, dtype, masked=m > 1)
    ours, reference = run_both(q, k, v, d_out, pad_mask)
    assert_matches_reference(ours, reference, dtype)


def test_long_keys_with_padding_and_a_custom_scale():
    (q, k, v, d_out), pad_mask = make_inputs(1, 1, 2, 4097, 16, torch.float32)
    ours, reference = run_both(q, k, v, d_out, pad_mask, scale=0.2, num_splits=3)
    assert_matches_reference(ours, reference, torch.float32)


def test_all_padding_sample_gives_zero_output_and_zero_finite_gradients():
    (q, k, v, d_out), pad_mask = make_inputs(2, 2, 5, 19, 16, torch.float32)
    assert pad_mask[1].all() and not pad_mask[0].all()
    (out, dq, dk, dv), _ = run_both(q, k, v, d_out, pad_mask, num_splits=2)
    for name, t in (("out", out), ("dq", dq), ("dk", dk), ("dv", dv)):
        assert torch.isfinite(t).all(), name
        assert torch.equal(t[1], torch.zeros_like(t[1])), name
    assert dq[0].abs().sum() > 0
    # Padded keys of the other sample get no gradient either.
    assert torch.equal(dk[0][:, pad_mask[0]], torch.zeros_like(dk[0][:, pad_mask[0]]))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_split_kv_equals_one_split(dtype):
    # 40 keys = 3 key blocks: 2 splits, 3 splits, and 5 splits (two chunks empty). Keys 16..31 are all padding,
    # so with 3 splits one whole chunk is masked.
    (q, k, v, d_out), pad_mask = make_inputs(2, 2, 9, 40, 16, dtype)
    pad_mask[0, 16:32] = True
    one, reference = run_both(q, k, v, d_out, pad_mask, num_splits=1)
    assert_matches_reference(one, reference, dtype)
    rtol, atol = TOLERANCES[dtype]
    for num_splits in (2, 3, 5):
        split, _ = run_both(q, k, v, d_out, pad_mask, num_splits=num_splits)
        for name, a, b in zip(("out", "dq", "dk", "dv"), split, one):
            torch.testing.assert_close(a, b, rtol=rtol / 10, atol=atol / 10, msg=lambda m: f"S={num_splits} {name}: {m}")


def test_backward_is_bitwise_deterministic():
    (q, k, v, d_out), pad_mask = make_inputs(2, 2, 20, 37, 24, torch.float32)
    first, _ = run_both(q, k, v, d_out, pad_mask, num_splits=3)
    second, _ = run_both(q, k, v, d_out, pad_mask, num_splits=3)
    for a, b in zip(first, second):
        assert torch.equal(a, b)


def test_strided_inputs():
    (q, k, v, d_out), pad_mask = make_inputs(2, 3, 6, 21, 16, torch.float32)
    # q as it comes from a (B, N, H, Dh) projection, k and v as slices of a wider tensor, mask every other column.
    q_strided = q.transpose(1, 2).contiguous().transpose(1, 2)
    kv = torch.cat([k, v], dim=-1)
    k_strided, v_strided = kv[..., :16], kv[..., 16:]
    wide_mask = torch.stack([pad_mask, ~pad_mask], dim=-1).flatten(1)
    mask_strided = wide_mask[:, ::2]
    d_out_strided = d_out.transpose(-1, -2).contiguous().transpose(-1, -2)
    assert not any(t.is_contiguous() for t in (q_strided, k_strided, v_strided, mask_strided, d_out_strided))
    ours, reference = run_both(q_strided, k_strided, v_strided, d_out_strided, mask_strided)
    assert_matches_reference(ours, reference, torch.float32)


# Causal: queries aligned with the last N keys, query i sees key j iff j <= i + M - N.
CAUSAL_SHAPES = [
    (1, 2, 19, 19, 16),  # N = M, past a block boundary
    (2, 1, 20, 50, 16),  # N < M: the first query block skips the last key block
    (2, 1, 37, 20, 8),  # N > M: the first 17 queries see no key, the first query block none at all
    (2, 2, 1, 23, 24),  # one query: it sees every key
    (1, 2, 5, 1, 16),  # one key: only the last query sees it
]


@pytest.mark.parametrize("num_splits", [1, 3])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("b, h, n, m, d", CAUSAL_SHAPES)
def test_causal_with_padding_matches_float64_reference(b, h, n, m, d, dtype, num_splits):
    (q, k, v, d_out), pad_mask = make_inputs(b, h, n, m, d, dtype, masked=m > 1)
    ours, reference = run_both(q, k, v, d_out, pad_mask, causal=True, num_splits=num_splits)
    assert_matches_reference(ours, reference, dtype)


@pytest.mark.parametrize("b, h, n, m, d", CAUSAL_SHAPES)
def test_causal_without_padding_matches_float64_reference(b, h, n, m, d):
    (q, k, v, d_out), _ = make_inputs(b, h, n, m, d, torch.float32, masked=False)
    ours, reference = run_both(q, k, v, d_out, None, causal=True, num_splits=2)
    assert_matches_reference(ours, reference, torch.float32)


@pytest.mark.parametrize("num_splits", [1, 2])
def test_causal_queries_that_see_only_padding_get_zero_output_and_zero_finite_gradients(num_splits):
    # N = 24 > M = 20: query i sees keys j <= i - 4, so queries 0..3 see none; with keys 0..4 of sample 0 padding,
    # its queries 0..8 see only padding (and 9 sees key 5 only). Sample 1 is all padding.
    (q, k, v, d_out), pad_mask = make_inputs(2, 2, 24, 20, 16, torch.float32)
    pad_mask[0] = False
    pad_mask[0, :5] = True
    pad_mask[0, 12] = True
    ours, reference = run_both(q, k, v, d_out, pad_mask, causal=True, num_splits=num_splits)
    assert_matches_reference(ours, reference, torch.float32)
    out, dq, dk, dv = ours
    for name, t in (("out", out[0, :, :9]), ("dq", dq[0, :, :9]), ("out", out[1]), ("dq", dq[1]), ("dk", dk[1])):
        assert torch.equal(t, torch.zeros_like(t)), name
    assert (out[0, :, 9:].abs().sum(-1) > 0).all() and dq[0, :, 9:].abs().sum() > 0
    assert torch.equal(dk[0][:, pad_mask[0]], torch.zeros_like(dk[0][:, pad_mask[0]]))
    assert torch.equal(dv[0][:, pad_mask[0]], torch.zeros_like(dv[0][:, pad_mask[0]]))


@pytest.mark.skipif(not INTERPRET, reason="needs the interpreter's fixed blocks of 16")
@pytest.mark.filterwarnings("ignore:All-NaN slice:RuntimeWarning")  # the tiles that are loaded
@pytest.mark.parametrize("num_splits", [1, 3])
def test_causal_skips_wholly_masked_blocks(num_splits):
    # With N = M = 48 in blocks of 16, query block i sees key blocks 0..i only. A NaN in a K or V tile that is
    # loaded reaches the result even where masked (0 · NaN = NaN), so finite results show which tiles were skipped.
    from perceiver.kernels.forward import _forward

    assert _forward.interpreter_config == {"BLOCK_N": 16, "BLOCK_M": 16}
    (q, k, v, d_out), _ = make_inputs(1, 1, 48, 48, 16, torch.float32, masked=False)
    _, (reference_out, reference_dq, reference_dk, reference_dv) = run_both(q, k, v, d_out, None, causal=True)
    tolerance = dict(rtol=1e-4, atol=1e-5)

    # Keys 32..47 (key block 2) are NaN: the forward and dQ of query blocks 0 and 1 must not load them.
    k_nan, v_nan = k.clone(), v.clone()
    k_nan[:, :, 32:] = float("nan")
    v_nan[:, :, 32:] = float("nan")
    (out, dq, _, _), _ = run_both(q, k_nan, v_nan, d_out, None, causal=True, num_splits=num_splits)
    torch.testing.assert_close(out[:, :, :32].double(), reference_out[:, :, :32], **tolerance)
    torch.testing.assert_close(dq[:, :, :32].double(), reference_dq[:, :, :32], **tolerance)

    # Queries 0..15 (query block 0) are NaN: dK and dV of key blocks 1 and 2 must not load them.
    q_nan = q.clone()
    q_nan[:, :, :16] = float("nan")
    (_, _, dk, dv), _ = run_both(q_nan, k, v, d_out, None, causal=True, num_splits=num_splits)
    torch.testing.assert_close(dk[:, :, 16:].double(), reference_dk[:, :, 16:], **tolerance)
    torch.testing.assert_close(dv[:, :, 16:].double(), reference_dv[:, :, 16:], **tolerance)


def test_no_key_gives_zero_output_and_gradients():
    (q, k, v, _), _ = make_inputs(1, 2, 3, 0, 16, torch.float32, masked=False)
    q.requires_grad_(True)
    out = attention(q, k, v)
    out.sum().backward()
    assert torch.equal(out, torch.zeros_like(q)) and torch.equal(q.grad, torch.zeros_like(q))


def test_triton_backend_of_attend_matches_math():
    (q, k, v, _), pad_mask = make_inputs(2, 2, 5, 11, 8, torch.float32)
    torch.testing.assert_close(
        perceiver.attend(q, k, v, pad_mask, scale=0.4, backend="triton"),
        perceiver.attend(q, k, v, pad_mask, scale=0.4, backend="math"),
        rtol=1e-5,
        atol=1e-6,
    )



def test_multi_head_attention_on_the_kernels_is_padding_invariant():
    torch.manual_seed(0)
    attention_module = perceiver.MultiHeadAttention(
        num_heads=2, num_q_input_channels=6, num_kv_input_channels=5, num_qk_channels=32, backend="triton"
    ).to(DEVICE)
    x_q, x_kv = torch.randn(1, 3, 6, device=DEVICE), torch.randn(1, 7, 5, device=DEVICE)
    alone = attention_module(x_q, x_kv)
    padded_kv = torch.cat([x_kv, 100 * torch.randn(1, 12, 5, device=DEVICE)], dim=1)
    pad_mask = torch.tensor([[False] * 7 + [True] * 12], device=DEVICE)
    torch.testing.assert_close(attention_module(x_q, padded_kv, pad_mask), alone, rtol=1e-5, atol=1e-5)

def test_unsupported_reason():
    (q, k, v, _), pad_mask = make_inputs(1, 1, 3, 5, 16, torch.float32)
    assert unsupported_reason(q, k, v, pad_mask) is None
    wide = torch.zeros(1, 1, 3, 160, device=DEVICE)
    assert "head dim 160" in unsupported_reason(wide, wide, wide, None)
    assert "dtype torch.float64" in unsupported_reason(q.double(), k.double(), v.double(), None)
    if INTERPRET:
        assert "bfloat16" in unsupported_reason(q.bfloat16(), k.bfloat16(), v.bfloat16(), None)


def _inputs_for_errors():
    (q, k, v, _), pad_mask = make_inputs(2, 3, 4, 6, 16, torch.float32)
    return q, k, v, pad_mask


@pytest.mark.parametrize(
    "change, error, match",
    [
        (lambda q, k, v, m: (q[0], k, v, m), ValueError, r"q: expected a 4-D tensor .* got shape \(3, 4, 16\)"),
        (lambda q, k, v, m: (q, k[..., :8], v, m), ValueError, r"k: expected shape \(2, 3, M, 16\)"),
        (lambda q, k, v, m: (q, k, v[:, :, :5], m), ValueError, r"v: expected shape \(2, 3, 6, 16\)"),
        (lambda q, k, v, m: (q, k, v.half(), m), TypeError, "q, k, v: expected one dtype"),
        (lambda q, k, v, m: (q, k, v, m.float()), TypeError, "pad_mask: expected dtype torch.bool"),
        (lambda q, k, v, m: (q, k, v, m[:, :5]), ValueError, r"pad_mask: expected shape \(2, 6\), got \(2, 5\)"),
        (lambda q, k, v, m: (q.double(), k.double(), v.double(), m), ValueError, "dtype torch.float64 is not supported"),
    ],
)
def test_bad_inputs_raise_clear_errors_before_launch(change, error, match):
    with pytest.raises(error, match=match):
        attention(*change(*_inputs_for_errors()))


def test_bad_num_splits_raises():
    with pytest.raises(ValueError, match="num_splits: expected a positive int"):
        attention(*_inputs_for_errors(), num_splits=0)


def test_bad_causal_raises():
    with pytest.raises(TypeError, match="causal: expected a bool, got str"):
        attention(*_inputs_for_errors(), causal="yes")


def test_num_splits_heuristic():
    # Enough programs to fill 80% of the SMs: no split.
    assert num_splits_heuristic(num_programs=120, num_sms=132, num_key_blocks=1000) == 1
    # One program on 4 SMs, 8 key blocks: 4 splits fill one whole wave.
    assert num_splits_heuristic(num_programs=1, num_sms=4, num_key_blocks=8) == 4
    # 2 programs on 4 SMs: 2 splits make one full wave; more would only add waves.
    assert num_splits_heuristic(num_programs=2, num_sms=4, num_key_blocks=8) == 2
    # Never more splits than key blocks.
    assert num_splits_heuristic(num_programs=1, num_sms=132, num_key_blocks=3) == 3
    # Perceiver cross-attention (N=512 latents in blocks of 128, B=8, H=1, M=50176) on 132 SMs: 32 programs.
    splits = num_splits_heuristic(num_programs=32, num_sms=132, num_key_blocks=784)
    assert splits > 1 and 32 * splits / 132 / math.ceil(32 * splits / 132) >= 0.85 * 0.99


def test_length_buckets_are_powers_of_two_capped():
    assert [length_bucket(n) for n in (1, 16, 17, 1000, 1024, 50_176, 10**7)] == [16, 16, 32, 1024, 1024, 65536, 65536]
