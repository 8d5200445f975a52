"""The kernel benchmark's tables and floors, the compile check of the kernels for a GPU that is not here, and the
script that runs the GPU checks."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from benchmarks import kernels as bench

ROOT = Path(__file__).resolve().parents[1]


def test_bench_formats_a_table_and_json_from_results():
    results = [
        {"shape": "cross B=1", "pass": "fwd", "method": "triton (ours)", "ms": 2.0, "tflops": 1.5, "peak_mib": 10.0},
        {"shape": "cross B=1", "pass": "fwd", "method": "sdpa cudnn", "ms": None, "note": "unavailable: no"},
    ]
    table = bench.format_table(results).splitlines()
    assert table[0].startswith("| shape | pass | method | ms | TFLOP/s | peak MiB")
    assert table[2] == "| cross B=1 | fwd | triton (ours) | 2.000 | 1.5 | 10 |  |"
    assert table[3] == "| cross B=1 | fwd | sdpa cudnn | - | - | - | unavailable: no |"
    document = json.loads(json.dumps(bench.report(results, {"device": "fake"})))
    assert document["environment"]["device"] == "fake" and document["results"][0]["ms"] == 2.0


def test_bench_flop_and_byte_floors():
    shape = bench.Shape("self", 4, 8, 4096, 4096)
    assert bench.flops(shape, "fwd") == 4 * 4 * 8 * 4096 * 4096 * 64
    assert bench.flops(shape, "fwd+bwd") == 3.5 * bench.flops(shape, "fwd")
    assert bench.min_bytes(shape, "fwd") == 4 * (4 * 8 * 4096 * 64) * 2
    row = bench.floors(shape, "fwd")
    assert row["compute_floor_ms"] == pytest.approx(bench.flops(shape, "fwd") / 989e12 * 1e3)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal without CUDA")
def test_bench_refuses_without_cuda(capsys):
    assert bench.main(["--quick"]) == 2
    assert "needs a CUDA GPU" in capsys.readouterr().err


def test_forward_compiles_for_h100_with_pipelined_tensor_core_loops(tmp_path):
    # Compiling needs no GPU; the interpreter must be off in the child process.
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_CACHE_DIR"] = str(tmp_path)
    command = [sys.executable, "-m", "benchmarks.compile_check", "--kernel", "forward", "--first"]
    result = subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    row = [line for line in result.stdout.splitlines() if line.startswith("| forward")][0]
    cells = [cell.strip() for cell in row.strip("|").split("|")]
    registers, spill_bytes, pipelined, tensor_cores = int(cells[5]), int(cells[6]), cells[8], cells[9]
    assert spill_bytes == 0 and registers <= 255
    assert pipelined == "yes" and tensor_cores == "yes"


def test_gpu_script_parses_and_names_what_exists():
    script = ROOT / "benchmarks" / "gpu.sh"
    result = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    text = script.read_text()
    modules = re.findall(r'-m (benchmarks\.\w+)', text)
    assert sorted(set(modules)) == ["benchmarks.kernels", "benchmarks.peers"]
    for module in modules:
        assert (ROOT / (module.replace(".", "/") + ".py")).is_file(), module
    for path in re.findall(r"tests/\w+\.py", text):
        assert (ROOT / path).is_file(), path
