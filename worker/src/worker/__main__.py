"""``python -m worker``: the same as ``ironclaw-worker``."""

import sys

from worker.main import main

sys.exit(main())
