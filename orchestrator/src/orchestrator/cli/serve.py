"""``ironclaw serve``: configuration errors are one clear line, never a traceback."""

from __future__ import annotations

import asyncio
import sys

from orchestrator.errors import ConfigError, OrchestratorError


def run_serve(drain: bool = False) -> int:
    from orchestrator.logging import configure_logging
    from orchestrator.service import serve_forever
    from orchestrator.settings import Settings

    try:
        settings = Settings.from_env()
    except ConfigError as exc:
        print(f"ironclaw serve: configuration error: {exc}", file=sys.stderr)
        return 2
    configure_logging(settings.log_level, settings.log_format)
    try:
        asyncio.run(serve_forever(settings, drain=drain))
    except OrchestratorError as exc:
        print(f"ironclaw serve: {exc.message}", file=sys.stderr)
        return 1
    except ConfigError as exc:
        print(f"ironclaw serve: configuration error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"ironclaw serve: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0
