"""``python -m bench [NAME ...] [--quick] [--json PATH]``: see ``bench.cli``."""

from bench.cli import main

raise SystemExit(main())
