"""``python -m expr_core``: see :mod:`expr_core.cli`."""

import sys

from expr_core.cli import main

sys.exit(main())
