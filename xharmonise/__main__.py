"""``python -m xharmonise``: the same command line as the ``xharmonise`` script."""

import sys

from xharmonise.cli import main

# Guarded: doctest collection imports every module of the package, this one included.
if __name__ == "__main__":
    sys.exit(main())
