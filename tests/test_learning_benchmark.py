"""The learning benchmark: its quick mode runs every model end to end and writes its table, JSON and plot; its
scheduler fills idle slots with ballast; its report."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import pytest

from perceiver.data import build_dataset

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_quick_run_trains_every_model_and_writes_table_json_and_plot(tmp_path):
    data = tmp_path / "fashion-mnist"
    build_dataset("fashion-mnist", data, splits=["train", "test"], limit=600)
    out = tmp_path / "results"
    done = subprocess.run([sys.executable, "-m", "benchmarks.learning", "--quick", "--data", str(data), "--out",
                           str(out)], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    report = json.loads((out / "learning.json").read_text())
    names = [r["model"] for r in report["results"]]
    assert names == ["ours", "ours-patches", "hf-learned", "hf-fourier", "hf-conv", "perceiver-pytorch", "cnn"]
    for r in report["results"]:
        assert "error" not in r, r
        assert r["steps"] > 0 and r["parameters"] > 0 and len(r["curve"]) == 2
        assert all(0.0 <= p["accuracy"] <= 1.0 for p in r["curve"])
        assert r["curve"][0]["seconds"] <= r["curve"][1]["seconds"]
    summary = report["summary"]
    assert summary["best_peer"] in ("hf-learned", "hf-fourier", "hf-conv", "perceiver-pytorch")
    assert summary["margin_over_cnn"] == pytest.approx(100 * (summary["ours"] - summary["cnn"]))
    table = (out / "learning.md").read_text()
    assert table in done.stdout and "| ours |" in table and "| cnn |" in table
    assert (out / "learning.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_schedule_warms_up_then_decays_on_the_training_clock():
    from benchmarks.learning import Recipe, lr_factor

    recipe = Recipe(minutes=1, evals=1)
    assert lr_factor(0.3, 60, recipe) == pytest.approx(0.3 / 1.8)  # warm-up over the first 3% (1.8 s)
    assert lr_factor(1.8, 60, recipe) == pytest.approx(1.0)
    assert lr_factor(60, 60, recipe) == pytest.approx(0.1) and lr_factor(90, 60, recipe) == pytest.approx(0.1)
    middle = 1.8 + (60 - 1.8) / 2
    assert lr_factor(middle, 60, recipe) == pytest.approx(0.55)


def test_report_names_the_augmentation_and_rejects_negative_shifts(capsys):
    from benchmarks.learning import augmentation, main

    assert augmentation({"max_shift": 0, "flip": True}) == "flips, no shifts"
    assert augmentation({"max_shift": 2, "flip": True}) == "shifts ±2 px and flips"
    assert augmentation({"max_shift": 1, "flip": False}) == "shifts ±1 px, no flips"
    assert augmentation({"max_shift": 0, "flip": False}) == "no shifts or flips"
    assert augmentation({"max_shift": 2}) == "shifts ±2 px and flips"  # reports from before --flip always flipped
    with pytest.raises(SystemExit):
        main(["--max-shift", "-1"])
    assert "--max-shift" in capsys.readouterr().err


def test_a_slot_no_model_is_left_to_fill_runs_ballast_until_the_last_model_ends(monkeypatch):
    import benchmarks.learning as learning

    seconds = {"a": 0.2, "b": 3.0, "c": 0.5}  # a and b start; c takes a's slot and ends; b finishes alone
    started = []

    def fake_worker(name, recipe, data):
        script = f"import json, time; time.sleep({seconds[name]}); print(json.dumps({{'model': {name!r}}}))"
        return [sys.executable, "-c", script]

    real_popen = subprocess.Popen

    def recording_popen(command, **kwargs):
        process = real_popen(command, **kwargs)
        started.append((command, process))
        return process

    monkeypatch.setattr(learning, "worker_command", fake_worker)
    monkeypatch.setattr(learning.subprocess, "Popen", recording_popen)
    results = learning.run_all(["a", "b", "c"], learning.Recipe(minutes=1, evals=1), Path("unused"), parallel=2)
    assert [r["model"] for r in results] == ["a", "b", "c"]
    assert [r["ballast"] for r in results] == [False, True, False]
    loads = [process for command, process in started if command == learning.ballast_command()]
    assert len(loads) == 1 and loads[0].poll() is not None  # started once, stopped with the last model

    started.clear()
    results = learning.run_all(["a", "b", "c"], learning.Recipe(minutes=1, evals=1), Path("unused"), parallel=2,
                               ballast=False)
    assert [r["ballast"] for r in results] == [False, False, False]
    assert all(command != learning.ballast_command() for command, _ in started)


def test_report_gives_margins_to_two_decimals_so_a_near_miss_does_not_round_onto_the_target():
    from benchmarks.learning import Recipe, markdown, summarize

    results = [dict(model=name, parameters=1, steps=1, images_per_second=1.0, accuracy=accuracy,
                    curve=[dict(seconds=1.0, steps=1, accuracy=accuracy)], ballast=name == "cnn")
               for name, accuracy in (("ours", 0.9151), ("hf-conv", 0.8807), ("cnn", 0.9254))]
    report = dict(command="c", date="d", machine="m", matmul_gflops=90.0, versions={}, load_before=[0.0],
                  load_after=[0.0], recipe=asdict(Recipe(minutes=1, evals=1)), results=results,
                  summary=summarize(results))
    table = markdown(report)
    assert "CNN 92.54% (ours -1.03 points)" in table and "(ours +3.44 points)" in table
    assert "cnn: beside a ballast load" in table


def test_a_run_of_ours_and_the_cnn_alone_still_reports_their_margin():
    from benchmarks.learning import summarize

    def result(name, accuracy):
        return dict(model=name, accuracy=accuracy)

    assert summarize([result("ours", 0.91), result("cnn", 0.925)]) == pytest.approx(
        dict(ours=0.91, cnn=0.925, margin_over_cnn=-1.5))
    assert "best_peer" not in summarize([result("ours", 0.91), result("cnn", 0.925)])
    assert summarize([result("ours", 0.9), result("hf-conv", 0.88)])["margin_over_peer"] == pytest.approx(2.0)
    assert summarize([result("cnn", 0.92)]) is None


def test_ours_is_the_fashion_mnist_experiment_default_model():
    """The benchmark builds ``ours`` itself (its workers run outside the package); the two must stay one model."""
    from benchmarks.learning import Recipe, build_ours
    from experiments import fashion_mnist

    ours = build_ours(Recipe(minutes=1, evals=1), "conv")
    experiment = fashion_mnist.build_model(fashion_mnist.arg_parser().parse_args([]))
    assert repr(ours) == repr(experiment)  # every layer and its sizes
    assert [(name, p.shape) for name, p in ours.named_parameters()] == [
        (name, p.shape) for name, p in experiment.named_parameters()]
