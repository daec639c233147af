"""``python -m ticketbench``: the command line where the console script is not installed (a checkout run with
``PYTHONPATH=src``, as the device check runs on a bare GPU node)."""

import sys

from .cli import main

sys.exit(main())
