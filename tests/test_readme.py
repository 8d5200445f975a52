"""Every Python snippet in the README runs, in order, in one namespace (later snippets may use earlier names)."""

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
SNIPPETS = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.DOTALL)


def test_the_readme_has_python_snippets():
    assert len(SNIPPETS) >= 2


def test_readme_snippets_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": "readme"}
    for number, snippet in enumerate(SNIPPETS, start=1):
        try:
            exec(compile(snippet, f"README.md python snippet {number}", "exec"), namespace)
        except Exception as error:  # re-raise with the snippet's number so a reader finds it
            pytest.fail(f"README python snippet {number} failed: {type(error).__name__}: {error}\n{snippet}")
