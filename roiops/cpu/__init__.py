"""Numba CPU kernels: parallel over the cores, deterministic backward, cached JIT."""
