"""Run the embedded offline benchmark (same as the ``um-bench`` console script).

    python benchmarks/embedded.py --out results/            # default, ~5 min on 2 CPUs
    python benchmarks/embedded.py --quick --out /tmp/smoke  # seconds
    python benchmarks/embedded.py --xi-sweep --out results-sweep/
"""
import sys

from um_plugin.bench.embedded import main

if __name__ == "__main__":
    sys.exit(main())
