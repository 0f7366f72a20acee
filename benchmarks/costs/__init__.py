"""What pruning costs and saves, measured: the pruned network's CPU latency against its FLOPs
(``latency``), the training an EPI-guided run saves against dense training (``training``), and
the time of one prune against Torch-Pruning's own pruner (``prune``).

Run ``python -m benchmarks.costs [--quick] [--only latency,training,prune]``; it writes
``benchmarks/results/<machine>_cpu_costs.{json,md,png}`` (``..._costs_quick`` with --quick)
atomically and prints PASS/FAIL per target. Targets are reported, never asserted.
"""
