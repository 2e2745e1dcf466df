"""File descriptors: the one resource every door of the orchestrator shares.

A worker-API connection, the upstream connection of an LLM call it makes, a control-plane
client, the engine's socket and the store all take one. The worker API's connection cap is
derived from the limit so that a job holding every worker-API connection it may cannot starve
the control plane (gRPC ``CreateJob``, ``GetJob``) of descriptors.
"""

from __future__ import annotations

import os
import resource
from dataclasses import dataclass

# Kept for everything but worker-API connections: gRPC clients, the engine, the store, logs,
# the loop's own descriptors, metrics scrapes.
FD_RESERVE = 128
# Each worker-API connection may hold a second descriptor: the upstream connection of the LLM
# call it is making.
FDS_PER_CONNECTION = 2
AUTO_MAX_CONNECTIONS_CEILING = 4096
AUTO_MAX_CONNECTIONS_FLOOR = 16


@dataclass(frozen=True)
class FdLimit:
    """The process's ``RLIMIT_NOFILE`` before and after :func:`raise_fd_limit`."""

    soft: int
    hard: int
    previous_soft: int
    error: str = ""  # why raising failed, when it did


def _finite(value: int) -> int:
    # RLIM_INFINITY is not a count: Linux caps descriptors at fs.nr_open anyway.
    return value if value != resource.RLIM_INFINITY else 1 << 20


def current_fd_limit() -> int:
    """The soft limit in force."""
    return _finite(resource.getrlimit(resource.RLIMIT_NOFILE)[0])


def raise_fd_limit() -> FdLimit:
    """Raises the soft ``RLIMIT_NOFILE`` to the hard limit (systemd's and Docker's soft default
    of 1,024 is far below what a host running many jobs needs); never lowers it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard
    if hard == resource.RLIM_INFINITY:
        target = _nr_open()
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (OSError, ValueError) as exc:
            return FdLimit(_finite(soft), _finite(hard), _finite(soft), error=str(exc))
        return FdLimit(_finite(target), _finite(hard), _finite(soft))
    return FdLimit(_finite(soft), _finite(hard), _finite(soft))


def _nr_open() -> int:
    try:
        with open("/proc/sys/fs/nr_open", encoding="ascii") as handle:
            return int(handle.read().strip())
    except (OSError, ValueError):
        return 1 << 20


def max_connections_for(fd_limit: int) -> int:
    """The worker-API connections ``fd_limit`` descriptors carry with the reserve kept."""
    return max(0, (fd_limit - FD_RESERVE) // FDS_PER_CONNECTION)


def auto_max_connections(fd_limit: int) -> int:
    """``ORCHESTRATOR_HTTP_MAX_CONNECTIONS`` when unset: what the limit carries, within bounds."""
    return max(
        AUTO_MAX_CONNECTIONS_FLOOR,
        min(AUTO_MAX_CONNECTIONS_CEILING, max_connections_for(fd_limit)),
    )


def open_fd_count() -> int | None:
    """Descriptors open in this process (Linux), for log lines about running out."""
    try:
        return len(os.listdir("/proc/self/fd"))
    except OSError:
        return None
