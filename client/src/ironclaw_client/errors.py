"""One exception tree for everything the control plane can answer, mapped from gRPC status
codes. Each error carries the server's own message (``message``) and the status name (``code``);
the original ``grpc.RpcError`` is its ``__cause__``."""

from __future__ import annotations

from typing import ClassVar

import grpc


class IronclawError(Exception):
    """Base of every error the client raises."""

    code: ClassVar[str] = "UNKNOWN"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return f"{self.message} ({self.code})"


class InvalidArgument(IronclawError):
    """The request was refused as malformed: a bad id, mode, limit or project directory."""

    code = "INVALID_ARGUMENT"


class NotFound(IronclawError):
    """No such job (or it was cleaned up)."""

    code = "NOT_FOUND"


class AlreadyExists(IronclawError):
    """The job id belonged to another job (one that was cleaned up): pick a new id."""

    code = "ALREADY_EXISTS"


class FailedPrecondition(IronclawError):
    """The call cannot apply now: the job has ended, the image is missing, the orchestrator is
    shutting down."""

    code = "FAILED_PRECONDITION"


class Unauthenticated(IronclawError):
    """The admin token is missing or wrong (``admin_token=`` or ORCHESTRATOR_ADMIN_TOKEN)."""

    code = "UNAUTHENTICATED"


class PermissionDenied(IronclawError):
    """The caller is known but not allowed this call."""

    code = "PERMISSION_DENIED"


class ResourceExhausted(IronclawError):
    """A limit was reached: a budget, a rate, a queue."""

    code = "RESOURCE_EXHAUSTED"


class Unavailable(IronclawError):
    """The orchestrator cannot be reached (not running, restarting, wrong address). The client
    retries what is safe to retry before raising it."""

    code = "UNAVAILABLE"


class TLSError(Unavailable):
    """The TLS handshake failed: the server's certificate is not trusted by the configured CA
    (``ca_file=`` / IRONCLAW_TLS_CA), names another host, or one side speaks plaintext. Never
    retried: it will not heal by itself."""


class Timeout(IronclawError):
    """A deadline passed: the call's own, or ``wait(timeout=)``'s."""

    code = "DEADLINE_EXCEEDED"


class Cancelled(IronclawError):
    """The call was cancelled."""

    code = "CANCELLED"


class ServerError(IronclawError):
    """The orchestrator failed in a way it did not classify (INTERNAL, UNKNOWN and the rest)."""

    code = "INTERNAL"

    def __init__(self, message: str, code: str = "INTERNAL") -> None:
        super().__init__(message)
        self.status = code

    def __str__(self) -> str:
        return f"{self.message} ({self.status})"


_BY_STATUS: dict[grpc.StatusCode, type[IronclawError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgument,
    grpc.StatusCode.OUT_OF_RANGE: InvalidArgument,
    grpc.StatusCode.NOT_FOUND: NotFound,
    grpc.StatusCode.ALREADY_EXISTS: AlreadyExists,
    grpc.StatusCode.FAILED_PRECONDITION: FailedPrecondition,
    grpc.StatusCode.UNAUTHENTICATED: Unauthenticated,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDenied,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ResourceExhausted,
    grpc.StatusCode.UNAVAILABLE: Unavailable,
    grpc.StatusCode.DEADLINE_EXCEEDED: Timeout,
    grpc.StatusCode.CANCELLED: Cancelled,
}

# What gRPC core says when a handshake fails; it has no status code of its own (UNAVAILABLE).
_TLS_MARKERS = ("ssl", "tls", "handshake", "certificate")


def looks_like_tls_failure(details: str) -> bool:
    lowered = details.lower()
    return any(marker in lowered for marker in _TLS_MARKERS)


def from_rpc_error(exc: grpc.RpcError) -> IronclawError:
    """The client's exception for a failed call (raise it ``from exc``)."""
    code: grpc.StatusCode = exc.code()
    details: str = exc.details() or code.name
    if code is grpc.StatusCode.UNAVAILABLE and looks_like_tls_failure(details):
        return TLSError(details)
    kind = _BY_STATUS.get(code)
    if kind is None:
        return ServerError(details, code.name)
    return kind(details)
