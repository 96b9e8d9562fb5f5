"""``python -m um_plugin.cli``: the same as the ``um-openood`` console script."""
import sys

from . import main

sys.exit(main())
