"""`python -m workerhost.cli`: the `workerhost` command, as the console script runs it."""

import sys

from workerhost.cli import main

sys.exit(main())
