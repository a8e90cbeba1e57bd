"""``python -m xharmonise``: the same command line as the ``xharmonise`` script."""

import sys

from xharmonise.cli import main

sys.exit(main())
