"""`python -m forecast`: the `forecast` command, through the same signal-safe start."""

import sys

from forecast.entry import main

sys.exit(main())
