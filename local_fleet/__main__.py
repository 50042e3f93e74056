"""``python -m local_fleet``: the fleet on one machine (see local_fleet/runner.py)."""

import sys

from local_fleet.runner import main

sys.exit(main())
