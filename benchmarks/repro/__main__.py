"""``python -m benchmarks.repro``: see ``--help``."""
import sys

from .pipeline import main

sys.exit(main())
