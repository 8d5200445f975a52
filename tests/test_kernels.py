"""The fused Triton attention kernels against a float64 reference.

Without CUDA they run under ``TRITON_INTERPRET=1`` (see ``conftest.py``), which is slow: shapes are tiny, but chosen
so that lengths are not multiples of the blocks (16 under the interpreter), head dims are not powers of two, and N or
M can be 1. The interpreter cannot run bf16 dots, so bf16 is tested on CUDA only.
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


def reference_attention(q, k, v, pad_mask, scale):
    """Float64, one sample at a time over only its unpadded keys; a sample with no key gets 0. Differentiable."""
    outputs = []
    for b in range(q.shape[0]):
        keep = torch.ones(k.shape[2], dtype=torch.bool) if pad_mask is None else ~pad_mask[b].cpu()
        if keep.any():
            scores = q[b] @ k[b][:, keep].transpose(-1, -2) * scale
            outputs.append(scores.softmax(dim=-1) @ v[b][:, keep])
        else:
            outputs.append(torch.zeros_like(q[b]))
    return torch.stack(outputs)


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


def run_both(q, k, v, d_out, pad_mask, *, scale=None, num_splits=None):
    """(output, dq, dk, dv) of the kernels and of the float64 reference."""
    leaves = [t.detach().clone().requires_grad_(True) for t in (q, k, v)]
    out = attention(*leaves, pad_mask, scale=scale, num_splits=num_splits)
    out.backward(d_out)
    ours = [out.detach()] + [t.grad for t in leaves]

    reference_leaves = [t.detach().cpu().double().requires_grad_(True) for t in (q, k, v)]
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    reference = reference_attention(*reference_leaves, None if pad_mask is None else pad_mask.cpu(), scale)
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
        (lambda q, k, v, m: (q, k, v, m.float()), TypeError, "pad_mask: expected a bool tensor of shape \\(2, 6\\)"),
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
