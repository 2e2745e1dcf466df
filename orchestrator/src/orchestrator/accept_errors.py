"""Accept errors (out of descriptors, buffers or memory) without a traceback storm.

asyncio's selector loop (``BaseSelectorEventLoop._accept_connection``, CPython 3.11-3.13)
accepts up to ``backlog`` connections per readiness event. On EMFILE, ENFILE, ENOBUFS or
ENOMEM it hands the error to the loop's exception handler (a traceback in the log), removes the
listening socket's reader and schedules a retry a second later, but then goes on looping: with
a backlog of 1,024 that is up to 1,024 tracebacks and 1,024 scheduled retries per event, every
second, for as long as descriptors are short (670,929 tracebacks in a minute, measured).

Two small pieces stop it:

* :class:`ResourceAwareSocket`, the listening socket the loop accepts on: after one resource
  error it answers the rest of that accept round as "nothing to accept", so the loop's own
  back-off (reader removed, one retry after a second) is the only thing that happens;
* :func:`install_accept_error_filter`, a loop exception handler that turns the loop's report
  of that error into a counter and one log line per interval, and passes everything else on.
"""

from __future__ import annotations

import asyncio
import errno
import socket
from collections.abc import Callable
from typing import Any

from orchestrator.fd_limit import current_fd_limit, open_fd_count
from orchestrator.log_throttle import ThrottledLog
from orchestrator.logging import get_logger

log = get_logger(__name__)

RESOURCE_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
# What asyncio's selector loop says when accept() fails for want of resources.
_LOOP_MESSAGE = "socket.accept() out of system resource"

ExceptionHandler = Callable[[asyncio.AbstractEventLoop, dict[str, Any]], object]


class ResourceAwareSocket(socket.socket):
    """A listening socket whose accept round ends at the first resource error."""

    _round_failed = False

    def accept(self) -> tuple[socket.socket, Any]:
        if self._round_failed:
            # The loop treats this as an empty backlog and stops the round; its reader was
            # already removed for the error raised below, and comes back with its retry.
            raise BlockingIOError(errno.EAGAIN, "accepting paused after a resource error")
        try:
            return super().accept()
        except OSError as exc:
            if exc.errno in RESOURCE_ERRNOS:
                self._round_failed = True
                _after_this_round(self._end_round)
            raise

    def _end_round(self) -> None:
        self._round_failed = False


def _after_this_round(callback: Callable[[], None]) -> None:
    try:
        asyncio.get_running_loop().call_soon(callback)
    except RuntimeError:  # accepted outside a loop: nothing batches the calls
        callback()


def listening_socket(host: str, port: int, backlog: int) -> ResourceAwareSocket:
    """A bound, listening TCP socket on host:port (0 picks a free port)."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    if not infos:  # pragma: no cover - getaddrinfo raises instead
        raise OSError(f"cannot resolve {host!r}")
    family, kind, proto, _, address = infos[0]
    sock = ResourceAwareSocket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind(address)
        sock.listen(backlog)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


class AcceptErrors:
    """Counts resource errors of accept(), logs them at a bounded rate."""

    def __init__(
        self, on_error: Callable[[str], None] | None = None, interval_s: float = 10.0
    ) -> None:
        self._on_error = on_error
        self._log = ThrottledLog(
            log,
            "accepting connections failed: out of system resources; backing off a second",
            interval_s=interval_s,
        )

    @property
    def total(self) -> int:
        return self._log.total

    def record(self, exc: BaseException | None, address: str) -> None:
        code = getattr(exc, "errno", None)
        name = errno.errorcode.get(code, "unknown") if isinstance(code, int) else "unknown"
        if self._on_error is not None:
            self._on_error(name)
        self._log.record(
            errno=name,
            listening=address,
            open_fds=open_fd_count(),
            fd_limit=current_fd_limit(),
        )

    def close(self) -> None:
        self._log.close()


def install_accept_error_filter(
    loop: asyncio.AbstractEventLoop, errors: AcceptErrors
) -> Callable[[], None]:
    """Routes the loop's accept-resource errors to ``errors``; every other report goes to the
    handler that was there before (or the default). Returns the function that undoes it."""
    previous = loop.get_exception_handler()

    def handler(current: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        if context.get("message") == _LOOP_MESSAGE:
            errors.record(context.get("exception"), _address(context.get("socket")))
            return
        if previous is not None:
            previous(current, context)
        else:
            current.default_exception_handler(context)

    loop.set_exception_handler(handler)

    def uninstall() -> None:
        if loop.get_exception_handler() is handler:
            loop.set_exception_handler(previous)

    return uninstall


def _address(sock: Any) -> str:
    try:
        name = sock.getsockname()
    except (AttributeError, OSError):
        return "unknown"
    return f"{name[0]}:{name[1]}" if isinstance(name, tuple) else str(name)
