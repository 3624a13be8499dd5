"""``python -m deqloop``: the same command line as ``deqloop``."""

import sys

from deqloop.cli import main

if __name__ == "__main__":
    sys.exit(main())
