"""Shard files: a deterministic tar writer and a tar reader that survives corrupt and truncated shards.

The reader parses the tar headers itself instead of using ``tarfile``: ``tarfile`` stops a whole shard at the first
bad header, while a training run wants every good sample of it. A header whose checksum fails is skipped by scanning
forward to the next valid header (tar headers sit on 512-byte boundaries), so one damaged member costs one sample.
"""

from __future__ import annotations

import io
import pathlib
import tarfile
from collections.abc import Callable, Iterator

BLOCK = 512
SHARD_PATTERN = "{name}-{split}-{index:06d}.tar"


def shard_path(directory: pathlib.Path, name: str, split: str, index: int) -> pathlib.Path:
    return pathlib.Path(directory) / SHARD_PATTERN.format(name=name, split=split, index=index)


class ShardWriter:
    """Writes samples (``{"__key__": str, field: bytes}``) into numbered tars of at most ``shard_size`` samples.

    Headers carry no time or owner, so the same samples always give the same bytes.
    """

    def __init__(self, directory: pathlib.Path, name: str, split: str, *, shard_size: int):
        if shard_size < 1:
            raise ValueError(f"shard_size: expected a positive number of samples, got {shard_size}")
        self.directory = pathlib.Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.name, self.split, self.shard_size = name, split, shard_size
        self.paths: list[pathlib.Path] = []
        self._tar: tarfile.TarFile | None = None
        self._count = 0

    def write(self, sample: dict) -> None:
        key = sample["__key__"]
        if "." in key or "/" in key:
            raise ValueError(f"sample key: expected no '.' or '/' (they separate key and field), got {key!r}")
        if self._tar is None or self._count == self.shard_size:
            self._open_next()
        for field in sorted(f for f in sample if not f.startswith("__")):
            data = sample[field]
            info = tarfile.TarInfo(f"{key}.{field}")
            info.size, info.mtime, info.mode = len(data), 0, 0o644
            self._tar.addfile(info, io.BytesIO(data))
        self._count += 1

    def _open_next(self) -> None:
        self.close()
        path = shard_path(self.directory, self.name, self.split, len(self.paths))
        partial = path.with_suffix(".tar.partial")  # renamed on close: a crash never leaves a short shard behind
        self.paths.append(path)
        self._tar = tarfile.open(partial, "w", format=tarfile.USTAR_FORMAT)
        self._count = 0

    def close(self) -> None:
        if self._tar is not None:
            self._tar.close()
            path = self.paths[-1]
            path.with_suffix(".tar.partial").replace(path)
            self._tar = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _valid_header(block: bytes) -> bool:
    if len(block) < BLOCK or block == bytes(BLOCK):
        return False
    try:
        stored = int(block[148:156].replace(b"\0", b" ").strip() or b"-1", 8)
    except ValueError:
        return False
    computed = sum(block[:148]) + 8 * 32 + sum(block[156:])
    return stored == computed


def _header_field(block: bytes, start: int, length: int) -> str:
    return block[start : start + length].split(b"\0", 1)[0].decode("utf-8", errors="replace")


def _header_name(block: bytes) -> str:
    name, prefix = _header_field(block, 0, 100), _header_field(block, 345, 155)
    return f"{prefix}/{name}" if prefix and block[257:262] == b"ustar" else name


def _header_size(block: bytes) -> int:
    raw = block[124:136]
    if raw[0] & 0x80:  # GNU base-256 size for members over 8 GiB
        return int.from_bytes(raw[1:], "big")
    return int(raw.replace(b"\0", b" ").strip() or b"0", 8)


def _pax_path(data: bytes) -> str | None:
    for record in data.decode("utf-8", errors="replace").split("\n"):
        _, _, entry = record.partition(" ")
        if entry.startswith("path="):
            return entry[5:]
    return None


def is_local_path(url: str) -> bool:
    """Whether a shard URL names a local file: a plain path (no ``scheme:``), not ``pipe:``, ``http(s):`` and so on.

    ``file:`` URLs count as local too (``local_path`` gives the path).
    """
    url = str(url)
    if url.startswith("file:"):
        return True
    scheme, colon, _ = url.partition(":")
    # "C:..." drive letters aside, a scheme is letters (and + - .) before the first colon
    return not colon or len(scheme) < 2 or not all(c.isalnum() or c in "+-." for c in scheme)


def local_path(url: str) -> str:
    """The file path of a local shard URL (``file:///a/b.tar`` → ``/a/b.tar``)."""
    url = str(url)
    if url.startswith("file://"):
        return url[len("file://"):]
    return url[len("file:"):] if url.startswith("file:") else url


def open_shard(url: str):
    """A binary stream of the shard at ``url``: a local path, or any URL webdataset's ``gopen`` opens (``pipe:CMD``,
    ``http(s)://`` through curl, ...)."""
    if is_local_path(url):
        return open(local_path(url), "rb")
    import webdataset as wds

    return wds.gopen(str(url), "rb")


def iter_members(path: str, report: Callable[[str, str], None]) -> Iterator[tuple[str, bytes]]:
    """(name, data) of every regular file in the tar at ``path`` (a local path or any URL ``open_shard`` opens).

    ``report(name_or_offset, problem)`` is called for each damaged header (skipped) and for a truncated last member
    (dropped); iteration goes on after a damaged header.
    """
    with open_shard(path) as file:
        offset, long_name, resyncing = 0, None, False
        while True:
            block = file.read(BLOCK)
            if len(block) < BLOCK:  # the end of the file before the end-of-archive blocks: the shard was cut
                if not resyncing:
                    report(f"offset {offset}", "truncated tar header" if block else "truncated tar (no end blocks)")
                return
            if block == bytes(BLOCK) and not resyncing:  # end of archive (while resyncing: zeros inside data)
                return
            if not _valid_header(block):
                if not resyncing and block != bytes(BLOCK):
                    report(f"offset {offset}", "damaged tar header (checksum mismatch); scanning for the next one")
                    resyncing = True
                offset += BLOCK
                continue
            resyncing = False
            size, kind = _header_size(block), block[156:157]
            padded = (size + BLOCK - 1) // BLOCK * BLOCK
            data = file.read(padded)
            name = long_name or _header_name(block)
            long_name = None
            if len(data) < size:
                report(name, f"truncated tar member ({len(data)} of {size} bytes)")
                return
            data = data[:size]
            offset += BLOCK + padded
            if kind == b"L":  # GNU long name for the next member
                long_name = data.split(b"\0", 1)[0].decode("utf-8", errors="replace")
            elif kind == b"x":  # pax extended header: only its path matters here
                long_name = _pax_path(data)
            elif kind in (b"0", b"\0", b"7"):
                yield name, data


def split_name(member: str) -> tuple[str, str]:
    """``"dir/key.field.ext"`` → (``"dir/key"``, ``"field.ext"``): the key ends at the first dot of the basename."""
    directory, _, base = member.rpartition("/")
    key, _, field = base.partition(".")
    return (f"{directory}/{key}" if directory else key), field.lower()


def iter_raw_samples(path: str, report: Callable[[str, str], None]) -> Iterator[dict]:
    """Group consecutive members with the same key into samples ``{"__key__", "__shard__", field: bytes}``.

    A sample whose member was cut off by a truncated shard comes out with ``"__damaged__"`` set to the problem, so
    that the decoder counts and reports it like any other corrupt sample. When the cut falls between members (or in
    a header), the last sample read carries ``"__truncated_after__"``: it is counted as corrupt if it turns out
    incomplete, and otherwise one lost sample after it is counted. A damaged header is reported here; the sample
    that lost the member then lacks a field, which the decoder counts.
    """
    current: dict | None = None
    truncated: list[tuple[str, str]] = []

    def note(where: str, problem: str) -> None:
        if problem.startswith("truncated"):
            truncated.append((where, problem))
        else:
            report(where, problem)

    for member, data in iter_members(path, note):
        key, field = split_name(member)
        if current is not None and current["__key__"] != key:
            yield current
            current = None
        if current is None:
            current = {"__key__": key, "__shard__": str(path)}
        current[field] = data
    for where, problem in truncated:
        key = split_name(where)[0] if not where.startswith("offset ") else where
        if current is not None and current["__key__"] == key:
            current["__damaged__"] = problem
        elif current is not None and where.startswith("offset "):
            current["__truncated_after__"] = f"{problem} at {where}"
        else:
            if current is not None:
                yield current
            current = {"__key__": key, "__shard__": str(path), "__damaged__": problem}
    if current is not None:
        yield current
