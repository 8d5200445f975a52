"""Every Python snippet in the README and in docs/*.md runs, in order, one namespace per file (later snippets of a
file may use earlier names)."""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def snippets(document: Path) -> list[str]:
    return re.findall(r"```python\n(.*?)```", document.read_text(), flags=re.DOTALL)


def test_the_readme_has_python_snippets():
    assert len(snippets(ROOT / "README.md")) >= 2


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda path: str(path.relative_to(ROOT)))
def test_document_snippets_run(document, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": "readme"}
    for number, snippet in enumerate(snippets(document), start=1):
        name = f"{document.relative_to(ROOT)} python snippet {number}"
        try:
            exec(compile(snippet, name, "exec"), namespace)
        except Exception as error:  # re-raise with the snippet's name so a reader finds it
            pytest.fail(f"{name} failed: {type(error).__name__}: {error}\n{snippet}")
