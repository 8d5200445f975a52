"""Experiment scripts: each runs as ``python -m experiments.NAME`` and follows the contract of ``common.py``."""
