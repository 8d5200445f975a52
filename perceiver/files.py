"""The one way the package saves a file: atomically, with the permissions of any new file (the umask's).

The content goes to a temporary file in the target's folder, is flushed and fsynced, then renamed over the target
with ``os.replace`` (atomic on POSIX), and the folder is fsynced so that the rename itself survives a power cut. A
process killed at any moment leaves either the old file or the new one, never a torn file (and perhaps a hidden
temporary file, which the next successful write of that path removes). ``tempfile.mkstemp`` creates files with mode
0600; the file is given ``0o666 & ~umask`` instead, like any file ``open`` creates, so that others on a shared machine
can read saved models when the umask lets them.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Callable


def atomic_write(path: str | os.PathLike, write: Callable[[str], object]) -> Path:
    """Call ``write(temporary_path)`` to fill a temporary file, then put it in place of ``path`` atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(handle)
    try:
        write(temporary)
        # after the write: a writer may replace the temporary file (safetensors does) rather than fill it
        os.chmod(temporary, 0o666 & ~current_umask())
        with open(temporary, "rb+") as file:
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    _fsync_directory(path.parent)
    _remove_stale_temporaries(path)
    return path


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` so that ``path`` holds either its old content or all of ``data``."""
    return atomic_write(path, lambda temporary: Path(temporary).write_bytes(data))


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """``atomic_write_bytes`` of ``text`` in UTF-8."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def write_results(out: str | os.PathLike, table: str, figures: dict) -> None:
    """A benchmark's results beside each other: its Markdown ``table`` in OUT.md, its ``figures`` as JSON in
    OUT.json, each written atomically."""
    out = Path(out)
    atomic_write_text(out.with_suffix(".md"), table.rstrip("\n") + "\n")
    atomic_write_text(out.with_suffix(".json"), json.dumps(figures, indent=2) + "\n")


def current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _remove_stale_temporaries(path: Path) -> None:
    # One writer per path: any other temporary file of this name was left by a writer killed mid-write.
    for stale in path.parent.glob(f".{path.name}.*.tmp"):
        stale.unlink(missing_ok=True)


def _fsync_directory(directory: Path) -> None:
    try:
        descriptor = os.open(directory, os.O_RDONLY)
    except OSError:  # some platforms cannot open a directory; the rename is still atomic there
        return
    try:
        os.fsync(descriptor)
    except OSError:
        pass
    finally:
        os.close(descriptor)
