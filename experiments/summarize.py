"""Compare runs: a Markdown table of chosen metrics from several runs' metrics.json, and optionally a bar chart.

    python -m experiments.summarize runs/av-fusion/* --keys test_accuracy_both test_accuracy_image_only \\
        test_accuracy_audio_only --plot runs/av-fusion/comparison.png

Each run is a row (named by its folder); a metric a run does not report is shown as "–" and left out of the chart.
Fractions in [0, 1] whose key names an accuracy or a recall are shown as percentages.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from experiments.common import METRICS_FILE


def read_runs(folders: list[Path]) -> dict[str, dict]:
    """``{folder name: metrics}`` of each folder's metrics.json; a folder without one is an error naming it."""
    runs = {}
    for folder in folders:
        path = Path(folder) / METRICS_FILE
        if not path.is_file():
            raise FileNotFoundError(f"runs: expected {path} (a finished run's metrics), found none")
        runs[Path(folder).name] = json.loads(path.read_text())
    return runs


def is_percentage(key: str) -> bool:
    return "accuracy" in key or "recall" in key


def format_value(key: str, value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if isinstance(value, float):
        return f"{100 * value:.1f}%" if is_percentage(key) and 0 <= value <= 1 else f"{value:.4g}"
    return str(value)


def markdown_table(runs: dict[str, dict], keys: list[str]) -> str:
    lines = ["| run | " + " | ".join(keys) + " |", "|---" * (len(keys) + 1) + "|"]
    for name, metrics in runs.items():
        lines.append(f"| {name} | " + " | ".join(format_value(key, metrics.get(key)) for key in keys) + " |")
    return "\n".join(lines)


def bar_chart(runs: dict[str, dict], keys: list[str], path: Path) -> Path:
    """Grouped bars: one group per run, one bar per key; the value is written on each bar."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    width = 0.8 / len(keys)
    labelled: set[str] = set()  # one legend entry per key
    figure, axis = plt.subplots(figsize=(1.2 + 1.1 * len(runs) * max(1, len(keys) / 2), 3.6))
    for k, key in enumerate(keys):
        for r, metrics in enumerate(runs.values()):
            value = metrics.get(key)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or math.isnan(value):
                continue
            shown = 100 * value if is_percentage(key) else value
            bar = axis.bar(r + (k - (len(keys) - 1) / 2) * width, shown, width, color=f"C{k}",
                           label=None if key in labelled else key)
            labelled.add(key)
            axis.bar_label(bar, fmt="%.1f", fontsize=7)
    axis.set_xticks(range(len(runs)), list(runs))
    axis.set_ylabel("%" if all(is_percentage(key) for key in keys) else "value")
    axis.legend(fontsize=7, loc="lower right")
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(prog="python -m experiments.summarize", description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path, help="run folders (each with a metrics.json)")
    parser.add_argument("--keys", nargs="+", required=True, help="metrics to compare, in column order")
    parser.add_argument("--plot", type=Path, default=None, help="also draw a grouped bar chart to this PNG")
    args = parser.parse_args(argv)
    runs = read_runs([folder for folder in args.runs if folder.is_dir()])
    if not runs:
        parser.error(f"runs: expected run folders, got no folder among {[str(f) for f in args.runs]}")
    table = markdown_table(runs, args.keys)
    print(table)
    if args.plot:
        print(f"chart: {bar_chart(runs, args.keys, args.plot)}")
    return table


if __name__ == "__main__":
    main()
