"""Benchmarks of epi_fast's fused kernels against plain PyTorch and Torch-Pruning.

Run ``python -m benchmarks [--quick] [--device cpu|cuda] [--out benchmarks/results]``.
What pruning costs and saves (latency of pruned networks, training saved by EPI, one prune
against Torch-Pruning): ``python -m benchmarks.costs [--quick] [--only latency,training,prune]``.
"""
