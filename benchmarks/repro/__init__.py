"""Paper reproduction through OpenOOD: ``python -m benchmarks.repro {cifar10,cifar100,imagenet}``."""
from .pipeline import ReproConfig, build_parser, main, run, side_by_side
from .suites import PAPER, SUITES, check_data, suite_info

__all__ = ["ReproConfig", "PAPER", "SUITES", "build_parser", "check_data", "main",
           "run", "side_by_side", "suite_info"]
