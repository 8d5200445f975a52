"""Benchmark of the fused kernels against every available PyTorch SDPA backend and a naive matmul + softmax.

    python -m benchmarks.kernels [--quick] [--out DIR]   # needs a CUDA GPU; prints Markdown, writes DIR/kernel_times.json
    python -m benchmarks.kernels --floors                # no GPU needed: the FLOP and byte floors per shape

For each shape and pass (forward, forward + backward) and each method it reports the time (median of
``triton.testing.do_bench``), the TFLOP/s it implies, and the peak memory the call allocates beyond its inputs.
FLOPs count the two matmuls only: 4·B·H·N·M·Dh for the forward, 2.5× that for the backward (five matmuls, as
FlashAttention counts), so forward + backward is 3.5×.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import sys
from pathlib import Path
from typing import Callable

import torch

# Reference rates of an H100 SXM (bf16 dense tensor cores, HBM3), for the floors only.
H100_PEAK_TFLOPS = 989.0
H100_MEASURED_MATMUL_TFLOPS = 798.0
H100_BANDWIDTH_TBPS = 3.35


@dataclasses.dataclass(frozen=True)
class Shape:
    kind: str  # "cross" (few queries, long keys) or "self" (N = M)
    batch: int
    heads: int
    n: int
    m: int
    head_dim: int = 64

    @property
    def name(self) -> str:
        return f"{self.kind} B={self.batch} H={self.heads} N={self.n} M={self.m} Dh={self.head_dim}"


SHAPES = [
    Shape("cross", 8, 1, 512, 50_176),
    Shape("cross", 8, 8, 512, 50_176),
    Shape("cross", 2, 1, 256, 200_000),
    Shape("self", 32, 8, 1024, 1024),
    Shape("self", 4, 8, 4096, 4096),
]
QUICK_SHAPES = [Shape("cross", 2, 1, 128, 4099), Shape("self", 2, 2, 512, 512)]
PASSES = ("fwd", "fwd+bwd")


def flops(shape: Shape, pass_: str) -> float:
    forward = 4.0 * shape.batch * shape.heads * shape.n * shape.m * shape.head_dim
    return forward if pass_ == "fwd" else 3.5 * forward


def min_bytes(shape: Shape, pass_: str, element_size: int = 2) -> float:
    """The least HBM traffic: read q, k, v and write o (fwd); the backward also reads o, dO and writes dq, dk, dv."""
    per_query_row = shape.batch * shape.heads * shape.n * shape.head_dim * element_size
    per_key_row = shape.batch * shape.heads * shape.m * shape.head_dim * element_size
    forward = 2 * per_query_row + 2 * per_key_row  # q, o ; k, v
    backward = 4 * per_query_row + 4 * per_key_row  # q, o, dO, dq ; k, v, dk, dv
    return forward if pass_ == "fwd" else forward + backward


def floors(shape: Shape, pass_: str) -> dict:
    """Lower bounds on the time of one call on an H100: compute-bound and memory-bound."""
    return {
        "shape": shape.name,
        "pass": pass_,
        "gflop": flops(shape, pass_) / 1e9,
        "min_mbytes": min_bytes(shape, pass_) / 1e6,
        "compute_floor_ms": flops(shape, pass_) / (H100_PEAK_TFLOPS * 1e12) * 1e3,
        "matmul_rate_floor_ms": flops(shape, pass_) / (H100_MEASURED_MATMUL_TFLOPS * 1e12) * 1e3,
        "memory_floor_ms": min_bytes(shape, pass_) / (H100_BANDWIDTH_TBPS * 1e12) * 1e3,
    }


def format_floors(rows: list[dict]) -> str:
    lines = [
        "| shape | pass | GFLOP | min MB | compute floor ms (989 TF/s) | at 798 TF/s ms | memory floor ms (3.35 TB/s) |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        lines.append(
            f"| {r['shape']} | {r['pass']} | {r['gflop']:.1f} | {r['min_mbytes']:.1f} | {r['compute_floor_ms']:.3f} "
            f"| {r['matmul_rate_floor_ms']:.3f} | {r['memory_floor_ms']:.3f} |"
        )
    return "\n".join(lines)


def format_table(results: list[dict]) -> str:
    """Markdown table of benchmark results: one row per (shape, pass, method)."""
    lines = ["| shape | pass | method | ms | TFLOP/s | peak MiB | note |", "| --- | --- | --- | ---: | ---: | ---: | --- |"]
    for r in results:
        if r.get("ms") is None:
            lines.append(f"| {r['shape']} | {r['pass']} | {r['method']} | - | - | - | {r.get('note', '')} |")
            continue
        lines.append(
            f"| {r['shape']} | {r['pass']} | {r['method']} | {r['ms']:.3f} | {r['tflops']:.1f} "
            f"| {r['peak_mib']:.0f} | {r.get('note', '')} |"
        )
    return "\n".join(lines)


def report(results: list[dict], environment: dict) -> dict:
    """The JSON document written next to the table."""
    return {"environment": environment, "results": results}


def environment() -> dict:
    import triton

    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    return {
        "device": device,
        "torch": torch.__version__,
        "triton": triton.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.cuda.is_available() else None,
        "python": platform.python_version(),
    }


def methods() -> dict[str, Callable]:
    """Every method to compare: our kernels, each SDPA backend on its own, and a naive matmul + softmax."""
    import torch.nn.functional as F
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from perceiver.kernels import attention

    def sdpa(backend):
        def run(q, k, v):
            with sdpa_kernel([backend]):
                return F.scaled_dot_product_attention(q, k, v)

        return run

    def naive(q, k, v):
        scores = torch.matmul(q, k.transpose(-1, -2)) * q.shape[-1] ** -0.5
        return torch.matmul(scores.softmax(dim=-1), v)

    return {
        "triton (ours)": attention,
        "sdpa flash": sdpa(SDPBackend.FLASH_ATTENTION),
        "sdpa efficient": sdpa(SDPBackend.EFFICIENT_ATTENTION),
        "sdpa cudnn": sdpa(SDPBackend.CUDNN_ATTENTION),
        "naive matmul+softmax": naive,
    }


def measure(method: Callable, shape: Shape, pass_: str, dtype: torch.dtype) -> dict:
    from triton.testing import do_bench

    device = "cuda"
    q = torch.randn(shape.batch, shape.heads, shape.n, shape.head_dim, device=device, dtype=dtype)
    k = torch.randn(shape.batch, shape.heads, shape.m, shape.head_dim, device=device, dtype=dtype)
    v = torch.randn_like(k)
    leaves = [q, k, v]
    if pass_ == "fwd":
        def call():
            with torch.no_grad():
                method(q, k, v)
    else:
        for t in leaves:
            t.requires_grad_(True)
        d_out = torch.randn_like(q)

        def call():
            method(q, k, v).backward(d_out)

    call()  # compile / autotune, and surface "not supported" before timing
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    baseline = torch.cuda.memory_allocated()
    call()
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() - baseline
    ms = do_bench(call, warmup=25, rep=100, grad_to_none=leaves if pass_ != "fwd" else None)
    return {"ms": ms, "tflops": flops(shape, pass_) / (ms * 1e-3) / 1e12, "peak_mib": peak / 2**20}


def run(shapes: list[Shape], dtype: torch.dtype = torch.bfloat16) -> list[dict]:
    results = []
    for shape in shapes:
        for pass_ in PASSES:
            for name, method in methods().items():
                row = {"shape": shape.name, "pass": pass_, "method": name, "ms": None}
                try:
                    row.update(measure(method, shape, pass_, dtype))
                except torch.cuda.OutOfMemoryError:
                    row["note"] = "out of memory"
                except RuntimeError as error:  # an SDPA backend that does not support this shape or GPU
                    row["note"] = f"unavailable: {str(error).splitlines()[0][:80]}"
                torch.cuda.empty_cache()
                results.append(row)
                print(format_table([row]).splitlines()[-1], flush=True)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small shapes, for a smoke test")
    parser.add_argument("--floors", action="store_true", help="print the FLOP/byte floors per shape (no GPU needed)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"),
                        help="folder for kernel_times.json and kernel_times.md")
    args = parser.parse_args(argv)
    shapes = QUICK_SHAPES if args.quick else SHAPES
    if args.floors:
        print(format_floors([floors(shape, pass_) for shape in shapes for pass_ in PASSES]))
        return 0
    if not torch.cuda.is_available():
        print("benchmarks.kernels needs a CUDA GPU (torch.cuda.is_available() is False); "
              "use --floors for the floors without one", file=sys.stderr)
        return 2
    results = run(shapes)
    table = format_table(results)
    env = environment()
    args.out.mkdir(parents=True, exist_ok=True)
    name = "kernel_times_quick" if args.quick else "kernel_times"
    (args.out / f"{name}.json").write_text(json.dumps(report(results, env), indent=2))
    (args.out / f"{name}.md").write_text(f"Device: {env['device']}; {env}\n\n{table}\n")
    print(f"\nDevice: {env['device']}\n\n{table}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
