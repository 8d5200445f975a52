"""Package list for setuptools; everything else is in setup.cfg.

The packages are found, not listed, so that a new subpackage cannot be left out of the wheel. ``kernels/`` lives at
the top level of the repository but installs as ``perceiver.kernels`` (``package_dir`` in setup.cfg), so that no
top-level module named ``kernels`` (an unrelated PyPI project) is ever installed.
"""

from setuptools import find_packages, setup

packages = find_packages(include=["perceiver", "perceiver.*"])
packages += ["perceiver.kernels"] + [f"perceiver.kernels.{name}" for name in find_packages("kernels")]
setup(packages=packages)
