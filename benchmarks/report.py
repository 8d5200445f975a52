"""What the spoken-digits benchmarks share at their end: the command and machine a results file records, and the
table printed and written beside its figures."""

from __future__ import annotations

import os
import platform
from typing import Callable

import torch

from perceiver.files import write_results


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
