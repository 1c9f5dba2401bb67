"""Benchmarks of the training workload (`deeplab bench`): throughput, step-time breakdown,
memory and analytic costs, side by side with other networks in the same run.

Apart from the product's training path: nothing in engine/ imports it.
"""
from .costs import TRAIN_FLOPS_PER_FORWARD, count_costs
from .throughput import COMPARISONS, PHASES, format_report, main, parse_args, run_bench

__all__ = ["COMPARISONS", "PHASES", "TRAIN_FLOPS_PER_FORWARD", "count_costs", "format_report",
           "main", "parse_args", "run_bench"]
