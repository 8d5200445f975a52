"""Fused Triton attention kernels, installed as ``perceiver.kernels``."""
