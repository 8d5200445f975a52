"""What the spoken-digits benchmarks share: the saved models they take, the scoring of recordings written to a
folder, and at their end the command and machine a results file records and the table printed beside its figures."""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
from pathlib import Path
from typing import Any, Callable

import torch

from experiments import predict_digits
from perceiver.files import write_results


def check_models(parser: argparse.ArgumentParser, models: list[Path], flag: str = "models") -> None:
    """A clear error, naming ``flag``, for a path that is not a saved model folder."""
    for model in models:
        if not (model / "config.json").is_file():
            parser.error(f"{flag}: expected a saved model folder (with config.json), got {model}")


def score_recordings(models: list[Path], write: Callable[[Path], Any], *, words_dir: Path | None = None,
                     threads: int | None = None) -> tuple[Any, list[dict]]:
    """``write(folder)`` puts recordings named by their digit into ``words_dir`` (a scratch folder when None); each
    model then scores the folder exactly as ``experiments.predict_digits`` scores recordings. Returns what ``write``
    returned and each model's result, its files named relative to the folder (a scratch folder's path is gone once
    the call returns, and would change every published report)."""
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(words_dir or scratch)
        folder.mkdir(parents=True, exist_ok=True)
        written = write(folder)
        flags = ["--threads", str(threads)] if threads else []
        results = [predict_digits.main([str(model), str(folder), *flags]) for model in models]
    for result in results:
        for entry in result["predictions"] + result["skipped"]:
            entry["file"] = str(Path(entry["file"]).relative_to(folder))
    return written, results


def provenance(module: str, argv: list[str]) -> dict:
    """The command that made a report (as typed: ``python -m MODULE ARGS``) and the machine it ran on."""
    return {"command": " ".join([f"python -m {module}", *argv]),
            "machine": f"{platform.machine()}, torch {torch.__version__}"}


def publish(report: dict, markdown: Callable[[dict], str], out: str | os.PathLike | None) -> dict:
    """Print ``report`` as ``markdown`` renders it and, with ``out``, write OUT.md and OUT.json (``write_results``)."""
    table = markdown(report)
    print(table)
    if out:
        write_results(out, table, report)
    return report
