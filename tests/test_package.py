import importlib


def test_kernels_install_as_a_subpackage():
    kernels = importlib.import_module("perceiver.kernels")
    assert kernels.__name__ == "perceiver.kernels"
