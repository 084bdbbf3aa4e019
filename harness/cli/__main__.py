"""``python -m harness.cli``: the command line, as the ``harness`` script runs it."""

import sys

from harness.cli import main

sys.exit(main())
