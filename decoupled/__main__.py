"""`python -m decoupled ...`: the same command line as `decoupled ...`."""

import sys

from decoupled.runners.cli import main

sys.exit(main())
