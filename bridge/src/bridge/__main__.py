"""``python -m bridge``: the same as ``ironclaw-claude-bridge``."""

import sys

from bridge.main import main

sys.exit(main())
