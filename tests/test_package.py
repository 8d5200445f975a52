import importlib
import importlib.util
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest


def test_kernels_install_as_a_subpackage():
    kernels = importlib.import_module("perceiver.kernels")
    assert kernels.__name__ == "perceiver.kernels"


def test_the_demo_trains_and_reports(capsys):
    from perceiver.__main__ import main

    result = main(["--steps", "3", "--batch-size", "4", "--num-latents", "8", "--num-latent-channels", "32"])
    printed = capsys.readouterr().out
    assert "M parameters" in printed and "median train step" in printed and "CPU thread(s) (" in printed
    assert result["parameters"] > 0 and result["median_step_seconds"] > 0
    assert 0.0 <= result["accuracy"] <= 1.0 and result["final_loss"] > 0


def test_the_demo_rejects_bad_arguments():
    from perceiver.__main__ import main

    with pytest.raises(SystemExit):
        main(["--steps", "0"])


def _package_dirs(root: Path, under: str, installed_as: str) -> set[str]:
    """Every folder with an ``__init__.py`` under ``root / under``, named as it installs (``a/b``)."""
    top = root / under
    return {str(Path(installed_as) / init.parent.relative_to(top)).replace("\\", "/").rstrip("/.")
            for init in top.rglob("__init__.py") if "__pycache__" not in init.parts}


@pytest.mark.slow
def test_the_wheel_holds_every_package_and_works_from_outside_the_repository(tmp_path):
    """``pip install .`` builds a wheel; an editable install would hide a subpackage missing from it."""
    repo = Path(__file__).resolve().parents[1]
    source = tmp_path / "source"   # a copy, so the build leaves nothing in the repository
    source.mkdir()
    for name in ("setup.py", "setup.cfg", "pyproject.toml", "README.md"):
        if (repo / name).exists():
            shutil.copy(repo / name, source / name)
    for name in ("perceiver", "kernels"):
        shutil.copytree(repo / name, source / name, ignore=shutil.ignore_patterns("__pycache__"))
    wheels = tmp_path / "wheels"
    # build with this environment's setuptools where it has one (no download); a fresh venv on Python 3.12+ has none
    isolation = [] if importlib.util.find_spec("setuptools") is None else ["--no-build-isolation"]
    subprocess.run([sys.executable, "-m", "pip", "wheel", str(source), "--no-deps", *isolation, "-q",
                    "-w", str(wheels)], check=True, cwd=tmp_path)
    (wheel,) = wheels.glob("*.whl")
    with zipfile.ZipFile(wheel) as archive:
        in_wheel = {str(Path(name).parent) for name in archive.namelist() if name.endswith("/__init__.py")}
    expected = _package_dirs(repo, "perceiver", "perceiver") | _package_dirs(repo, "kernels", "perceiver/kernels")
    assert expected - in_wheel == set(), f"packages missing from the wheel: {sorted(expected - in_wheel)}"
    assert not any(name == "kernels" or name.startswith("kernels/") for name in in_wheel), in_wheel

    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target), str(wheel)],
                   check=True, cwd=tmp_path)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {**os.environ, "PYTHONPATH": str(target), "PYTHONNOUSERSITE": "1"}
    check = ("import perceiver, perceiver.data, perceiver.data.sources, perceiver.kernels, perceiver.training; "
             "import pathlib, sys; "
             f"assert pathlib.Path(perceiver.__file__).is_relative_to({str(target)!r}), perceiver.__file__; "
             f"assert pathlib.Path(perceiver.kernels.__file__).is_relative_to({str(target)!r}); "
             "print('ok')")
    result = subprocess.run([sys.executable, "-c", check], cwd=elsewhere, env=env, capture_output=True, text=True)
    assert result.returncode == 0 and "ok" in result.stdout, result.stderr
    result = subprocess.run([sys.executable, "-m", "perceiver.data", "--help"], cwd=elsewhere, env=env,
                            capture_output=True, text=True)
    assert result.returncode == 0 and "build" in result.stdout, result.stderr


def test_a_checkout_finds_its_kernels_without_an_editable_install(tmp_path):
    """``python -m experiments.NAME`` in a checkout imports the checkout's perceiver, whose kernels lie beside it."""
    repo = Path(__file__).resolve().parents[1]
    check = ("import perceiver, perceiver.kernels.interface, pathlib; "
             f"assert pathlib.Path(perceiver.kernels.__file__).parent == pathlib.Path({str(repo / 'kernels')!r}); "
             "print('ok')")
    # -S skips the .pth files, and with them an editable install's finder; PYTHONPATH gives the checkout and torch
    site_packages = [path for path in sys.path if path.endswith("site-packages")]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(repo), *site_packages])}
    result = subprocess.run([sys.executable, "-S", "-c", check], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert result.returncode == 0 and "ok" in result.stdout, result.stderr
