"""``python -m deqloop.cli`` (as torchrun runs it): the ``deqloop`` command."""

import sys

from deqloop.cli import main

sys.exit(main())
