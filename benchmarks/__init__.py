"""Benchmarks of epi_fast's fused kernels against plain PyTorch and Torch-Pruning.

Run ``python -m benchmarks [--quick] [--device cpu|cuda] [--out benchmarks/results]``.
"""
