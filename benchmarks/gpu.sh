#!/usr/bin/env bash
# Every GPU check of the project in one call, for a short lease on a CUDA machine:
#   1. the machine: nvidia-smi, versions, and the two ceilings (bf16 matmul rate, device-to-device copy bandwidth);
#   2. the kernel benchmark (benchmarks.kernels: ours against each SDPA backend and a naive matmul + softmax);
#   3. the peer benchmark, config b (benchmarks.peers: a train step of ours, Hugging Face's and lucidrains');
#   4. the kernel tests on CUDA (compiled, autotuned, bf16 included), in parallel to spread Triton's compile time.
#
#   OUT=DIR bash benchmarks/gpu.sh        # results and logs in DIR (default benchmarks/results/gpu)
#
# Each step has its own time limit, so that one that hangs leaves the others their time; the steps run in the order
# of what is least replaceable, and all of them within 10 minutes. Results are written as each step finishes. On an
# H200 the machine and kernel steps took about 80 s; the kernel tests need more than 180 s on 16 workers (their fp32
# cases compile slowly, see benchmarks/results/kernels.md).
set -u
OUT=${OUT:-benchmarks/results/gpu}
PYTHON=${PYTHON:-python3}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

{
    date -u
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm,power.limit --format=csv
    "$PYTHON" - <<'EOF'
import torch, triton
print(f"torch {torch.__version__}, triton {triton.__version__}, CUDA {torch.version.cuda}, "
      f"{torch.cuda.get_device_name()}, {torch.cuda.get_device_properties(0).multi_processor_count} SMs")
from triton.testing import do_bench
a, b = (torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16) for _ in range(2))
ms = do_bench(lambda: a @ b, warmup=100, rep=500, return_mode="median")
print(f"bf16 matmul 8192^3: {2 * 8192**3 / ms / 1e9:.0f} TFLOP/s (median of do_bench)")
src = torch.randn(2**30, device="cuda", dtype=torch.float32)  # 4 GiB
dst = torch.empty_like(src)
ms = do_bench(lambda: dst.copy_(src), warmup=100, rep=500, return_mode="median")
print(f"device copy 4 GiB: {2 * src.numel() * 4 / ms / 1e9:.2f} TB/s counting bytes read and written")
EOF
} 2>&1 | tee "$OUT/machine.txt"

echo "== kernel benchmark"
timeout 120 "$PYTHON" -m benchmarks.kernels --out "$OUT" 2>&1 | tee "$OUT/kernels.log"

echo "== peer benchmark, config b"
timeout 200 "$PYTHON" -m benchmarks.peers --config b --out "$OUT" \
    --note "Made by benchmarks/gpu.sh on a lent GPU machine." > "$OUT/peers.log" 2>&1
echo "benchmarks.peers exit status $?"
tail -n 30 "$OUT/peers.log"

echo "== kernel tests on CUDA"
timeout 220 "$PYTHON" -m pytest -v -n 16 -p no:cacheprovider tests/test_kernels.py tests/test_kernel_benchmarks.py \
    > "$OUT/tests.log" 2>&1
echo "pytest exit status $?"
grep -E "FAILED|ERROR" "$OUT/tests.log" | head -n 20
tail -n 3 "$OUT/tests.log"
