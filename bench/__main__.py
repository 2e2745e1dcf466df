"""``python -m bench [proxy] [start] [--quick] [--json PATH] [--profile]``."""

from bench.cli import main

raise SystemExit(main())
