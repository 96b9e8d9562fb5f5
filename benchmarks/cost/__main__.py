"""``python -m benchmarks.cost``: see ``--help``."""
import sys

from .run import main

sys.exit(main())
