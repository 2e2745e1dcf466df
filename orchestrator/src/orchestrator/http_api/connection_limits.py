"""How many worker-API connections may be open, from one source and in all, and how long each
phase of a connection may take (``ORCHESTRATOR_HTTP_*`` in the README's configuration table)."""

from __future__ import annotations

from dataclasses import dataclass

from orchestrator.errors import ConfigError
from orchestrator.fd_limit import (
    FD_RESERVE,
    FDS_PER_CONNECTION,
    auto_max_connections,
    max_connections_for,
)
from orchestrator.settings import Settings

SWEEP_INTERVAL_S = 1.0


@dataclass(frozen=True)
class ConnectionLimits:
    """Bounds on the worker API's connections. The defaults are the settings' defaults with the
    connection cap of a 1,024-descriptor limit."""

    max_connections: int = auto_max_connections(1024)
    max_per_source: int = 64
    # The whole request head (request line and headers) within this, from its first byte (or
    # from the accept, for a connection's first request): not per line, so a client sending one
    # header line every few seconds gains nothing.
    header_timeout_s: float = 10.0
    # The whole body within this, from the end of its head.
    body_timeout_s: float = 60.0
    # Between requests on a keep-alive connection; also how long a response may sit unread.
    idle_timeout_s: float = 60.0

    @property
    def sweep_interval_s(self) -> float:
        """How often deadlines are checked: a deadline is late by at most this."""
        shortest = min(self.header_timeout_s, self.body_timeout_s, self.idle_timeout_s)
        return min(SWEEP_INTERVAL_S, max(0.01, shortest / 4))


def connection_limits(settings: Settings, fd_limit: int) -> ConnectionLimits:
    """The limits for ``settings`` under a soft descriptor limit of ``fd_limit``.

    An unset ``ORCHESTRATOR_HTTP_MAX_CONNECTIONS`` follows the descriptor limit; a value the
    limit cannot carry is a configuration error rather than a cap that would not protect.
    """
    wanted = settings.http_max_connections
    if wanted is None:
        total = auto_max_connections(fd_limit)
    else:
        carried = max_connections_for(fd_limit)
        if wanted > carried:
            needed = wanted * FDS_PER_CONNECTION + FD_RESERVE
            raise ConfigError(
                f"ORCHESTRATOR_HTTP_MAX_CONNECTIONS={wanted} needs a file-descriptor limit of at "
                f"least {needed}, and this process has {fd_limit}: raise it (LimitNOFILE= in the "
                f"systemd unit, ulimits in compose, ulimit -n) or set at most {carried}"
            )
        total = wanted
    return ConnectionLimits(
        max_connections=total,
        max_per_source=settings.http_max_connections_per_source,
        header_timeout_s=settings.http_header_timeout_s,
        body_timeout_s=settings.http_body_timeout_s,
        idle_timeout_s=settings.http_idle_timeout_s,
    )
