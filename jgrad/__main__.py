"""``python -m jgrad``: the ``jgrad`` command (see :mod:`jgrad.cli`)."""

import sys

from jgrad.cli import main

sys.exit(main())
