"""``python -m benchmarks.embedded``: see ``--help``."""
import sys

from .cli import main

sys.exit(main())
