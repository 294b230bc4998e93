"""``python -m fasterrcnn``: the command line (see ``fasterrcnn.cli``)."""

import sys

from fasterrcnn.cli import main

sys.exit(main())
