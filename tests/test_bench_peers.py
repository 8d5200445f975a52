"""The peer benchmark runs end to end on a tiny config and reports every implementation (table and JSON)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("transformers", reason="transformers is not installed (pip install -e '.[bench]')")
pytest.importorskip("perceiver_pytorch", reason="perceiver-pytorch is not installed (pip install -e '.[bench]')")

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "peers.py"


@pytest.mark.slow
def test_quick_run_writes_a_table_and_json_with_all_three_implementations(tmp_path):
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--out", str(tmp_path)], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads((tmp_path / "peers.json").read_text())
    results = report["configs"]["quick"]["results"]
    assert [r["implementation"] for r in results] == ["ours", "transformers", "perceiver-pytorch"]
    for r in results:
        assert "error" not in r, r
        assert r["step_seconds_median"] > 0 and len(r["step_seconds"]) == 2
        assert r["peak_memory_mib"] >= 0 and r["parameters"] > 0  # a tiny model may not raise the peak
    ours, hf = results[0], results[1]
    assert ours["parameters"] == hf["parameters"]  # the same architecture, built by each library
    table = (tmp_path / "peers.md").read_text()
    assert table in done.stdout
    assert "| ours | 2 |" in table and "| transformers | 2 |" in table and "| perceiver-pytorch | 2 |" in table
    assert "load before" in table and "load after" in table
