"""The generation benchmark's quick mode: cached and uncached generation agree and the table and JSON are written."""

import json

from benchmarks import generation


def test_quick_mode_writes_table_and_json_with_matching_bytes(tmp_path):
    result = generation.main(["--quick", "--out", str(tmp_path / "generation")])
    (row,) = result["rows"]
    assert row["same_bytes"] is True and row["num_latents"] == 32
    assert row["cached_ms_per_byte"] > 0 and row["uncached_ms_per_byte"] > 0
    assert json.loads((tmp_path / "generation.json").read_text()) == result
    table = (tmp_path / "generation.md").read_text()
    assert "| 32 |" in table and "torch" in result["versions"]
