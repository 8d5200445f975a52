import importlib

import pytest


def test_kernels_install_as_a_subpackage():
    kernels = importlib.import_module("perceiver.kernels")
    assert kernels.__name__ == "perceiver.kernels"


def test_the_demo_trains_and_reports(capsys):
    from perceiver.__main__ import main

    result = main(["--steps", "3", "--batch-size", "4", "--num-latents", "8", "--num-latent-channels", "32"])
    printed = capsys.readouterr().out
    assert "M parameters" in printed and "median train step" in printed
    assert result["parameters"] > 0 and result["median_step_seconds"] > 0
    assert 0.0 <= result["accuracy"] <= 1.0 and result["final_loss"] > 0


def test_the_demo_rejects_bad_arguments():
    from perceiver.__main__ import main

    with pytest.raises(SystemExit):
        main(["--steps", "0"])
