"""``python -m dropclass_fast.analysis``: see :mod:`dropclass_fast.analysis.cli`."""

import sys

from .cli import main

sys.exit(main())
