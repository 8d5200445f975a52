"""Compile the kernels' autotune candidates for a GPU architecture, without a GPU, and report their resource use.

    python -m benchmarks.compile_check [--arch 90] [--dtype bf16] [--head-dim 64] [--kernel forward]

Prints a Markdown table, one row per (kernel, config): registers per thread, local memory per thread (register
spills), shared memory, and whether the K/V loads are pipelined (``cp.async``) and the dots run on tensor cores
(``wgmma`` on sm_90, ``mma`` before). This catches a kernel that does not compile for CUDA, or one that spills or
loses its vectorised loads, on a machine without a GPU. It is no benchmark: time needs a GPU
(``python -m benchmarks.kernels``).

Inputs are specialised as the runtime specialises contiguous tensors: unit head-dim strides, other strides and
pointers divisible by 16. Needs ``TRITON_INTERPRET`` unset (the interpreter replaces the compiler) and CUDA's
``cuobjdump``, which the triton wheel ships.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from perceiver.kernels import backward, forward
from perceiver.kernels.runtime import INTERPRET, head_dim_block


def kernels(dtype: str) -> dict[str, tuple]:
    """name -> (kernel, autotune configs, pointer argument types, float arguments)."""
    forward_pointers = {"Q": dtype, "K": dtype, "V": dtype, "PadMask": "u8", "Out": dtype, "Lse": "fp32"}
    backward_pointers = {"Q": dtype, "K": dtype, "V": dtype, "PadMask": "u8", "dOut": dtype, "Lse": "fp32",
                         "Delta": "fp32", "dK": dtype, "dV": dtype, "dQ": "fp32"}
    return {
        "forward": (forward._forward.kernel, forward._forward.configs, forward_pointers, ("scale_log2",)),
        "dkdv": (backward._dkdv.kernel, backward._dkdv.configs, backward_pointers, ("scale", "scale_log2")),
        "dq": (backward._dq.kernel, backward._dq.configs, backward_pointers, ("scale", "scale_log2")),
    }


def compile_config(kernel, config: triton.Config, pointers: dict, floats, *, dtype: str, head_dim: int, arch: int,
                   has_mask: bool = True, causal: bool = False) -> dict:
    constants = dict(config.kwargs, HAS_MASK=has_mask, CAUSAL=causal, HEAD_DIM=head_dim, BLOCK_D=head_dim_block(head_dim),
                     DOT_PRECISION="ieee" if dtype == "fp32" else "tf32")
    for name in kernel.arg_names:
        if name.startswith("stride") and name.endswith("d"):
            constants[name] = 1
    signature = {}
    for name in kernel.arg_names:
        if name in constants:
            signature[name] = "constexpr"
        elif name in pointers:
            signature[name] = "*" + pointers[name]
        else:
            signature[name] = "fp32" if name in floats else "i32"
    aligned = {(i,): [["tt.divisibility", 16]] for i, name in enumerate(kernel.arg_names)
               if name not in constants and (name in pointers or name.startswith("stride"))}
    compiled = triton.compile(
        ASTSource(fn=kernel, signature=signature, constexprs=constants, attrs=aligned),
        target=GPUTarget("cuda", arch, 32),
        options={"num_warps": config.num_warps, "num_stages": config.num_stages},
    )
    usage = _resource_usage(compiled.asm["cubin"])
    ptx = compiled.asm["ptx"]
    return {
        "registers": usage["REG"],
        "spill_bytes": usage["LOCAL"],
        "shared_bytes": compiled.metadata.shared,
        "pipelined_loads": "cp.async" in ptx,
        "tensor_cores": bool(re.search(r"\b(wgmma|mma)\.", ptx)),
    }


def _resource_usage(cubin: bytes) -> dict[str, int]:
    cuobjdump = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "kernel.cubin")
        Path(path).write_bytes(cubin)
        text = subprocess.run([str(cuobjdump), "--dump-resource-usage", path], capture_output=True, text=True,
                              check=True).stdout
    return {key: int(value) for key, value in re.findall(r"\b(REG|LOCAL):(\d+)", text)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", type=int, default=90, help="compute capability x 10 (90 = H100)")
    parser.add_argument("--dtype", choices=["bf16", "fp16", "fp32"], default="bf16")
    parser.add_argument("--head-dim", type=int, default=64)
    parser.add_argument("--kernel", choices=["forward", "dkdv", "dq"], action="append",
                        help="only these kernels (repeatable); default all")
    parser.add_argument("--first", action="store_true", help="only the first autotune config of each kernel")
    args = parser.parse_args(argv)
    if INTERPRET:
        print("compile_check needs TRITON_INTERPRET unset: the interpreter replaces the compiler", file=sys.stderr)
        return 2
    print(f"sm_{args.arch}, {args.dtype}, head dim {args.head_dim}\n")
    print("| kernel | BLOCK_N | BLOCK_M | warps | stages | registers | spill bytes | shared KiB | cp.async | tensor cores |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- | --- |")
    for name, (kernel, configs, pointers, floats) in kernels(args.dtype).items():
        if args.kernel and name not in args.kernel:
            continue
        for config in configs[:1] if args.first else configs:
            r = compile_config(kernel, config, pointers, floats, dtype=args.dtype, head_dim=args.head_dim,
                               arch=args.arch)
            print(f"| {name} | {config.kwargs['BLOCK_N']} | {config.kwargs['BLOCK_M']} | {config.num_warps} "
                  f"| {config.num_stages} | {r['registers']} | {r['spill_bytes']} | {r['shared_bytes'] / 1024:.0f} "
                  f"| {'yes' if r['pipelined_loads'] else 'no'} | {'yes' if r['tensor_cores'] else 'no'} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
