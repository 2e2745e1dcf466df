"""One exception hierarchy for the orchestrator, and the one table that maps it to the wire.

Every error a caller can act on derives from :class:`OrchestratorError`. The gRPC servicer and the
HTTP worker API both translate through :class:`ErrorKind`, so a kind of failure has the same
meaning on both doors. Messages are written for a person and never carry a secret; what a
program must act on is the optional ``refusal`` code (``ironclaw_contract.worker_api.Refusal``),
which every renderer of an error carries next to the message.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from ironclaw_contract.worker_api import Refusal


@dataclass(frozen=True)
class WireCodes:
    """How one kind of error appears on each door."""

    grpc_status: str  # a grpc.StatusCode member name; grpc is not imported here on purpose
    http_status: int
    http_code: str  # the "error" field of the JSON error body


class ErrorKind(enum.Enum):
    """The kinds of failure, each with its gRPC status and HTTP code."""

    INVALID_ARGUMENT = WireCodes("INVALID_ARGUMENT", 400, "invalid_request")
    SCHEMA_VIOLATION = WireCodes("INVALID_ARGUMENT", 422, "invalid_body")
    NOT_FOUND = WireCodes("NOT_FOUND", 404, "not_found")
    ALREADY_EXISTS = WireCodes("ALREADY_EXISTS", 409, "already_exists")
    FAILED_PRECONDITION = WireCodes("FAILED_PRECONDITION", 409, "failed_precondition")
    UNAUTHENTICATED = WireCodes("UNAUTHENTICATED", 401, "invalid_token")
    PERMISSION_DENIED = WireCodes("PERMISSION_DENIED", 403, "permission_denied")
    RESOURCE_EXHAUSTED = WireCodes("RESOURCE_EXHAUSTED", 429, "budget_exceeded")
    RATE_LIMITED = WireCodes("RESOURCE_EXHAUSTED", 429, "rate_limited")
    PAYLOAD_TOO_LARGE = WireCodes("INVALID_ARGUMENT", 413, "body_too_large")
    # A streamed upload over its size limit: the stream itself was well-formed.
    TOO_LARGE = WireCodes("RESOURCE_EXHAUSTED", 413, "too_large")
    DEADLINE_EXCEEDED = WireCodes("DEADLINE_EXCEEDED", 504, "deadline_exceeded")
    PROVIDER_FAILED = WireCodes("UNAVAILABLE", 502, "provider_failed")
    PROVIDER_NOT_CONFIGURED = WireCodes("FAILED_PRECONDITION", 503, "no_provider")
    UNAVAILABLE = WireCodes("UNAVAILABLE", 503, "unavailable")
    INTERNAL = WireCodes("INTERNAL", 500, "internal")


class OrchestratorError(Exception):
    """Base of every error the orchestrator reports to a caller.

    ``refusal``, when set, says in a code why a call the orchestrator understood was refused
    (a budget, the model allowlist, a rate limit): the error bodies carry it, so a client acts
    on the code and never on the English of ``message``.
    """

    kind: ErrorKind = ErrorKind.INTERNAL
    refusal: Refusal | None = None

    def __init__(self, message: str, *, refusal: Refusal | None = None) -> None:
        super().__init__(message)
        self.message = message
        if refusal is not None:
            self.refusal = refusal


class InvalidArgument(OrchestratorError):
    """The request is malformed or names something that is not allowed."""

    kind = ErrorKind.INVALID_ARGUMENT


class SchemaViolation(OrchestratorError):
    """A request body is well-formed JSON but does not match its schema."""

    kind = ErrorKind.SCHEMA_VIOLATION


class JobNotFound(OrchestratorError):
    """No job with that id is known to this orchestrator."""

    kind = ErrorKind.NOT_FOUND

    def __init__(self, job_id: str) -> None:
        super().__init__(f"job {job_id} not found")
        self.job_id = job_id


class AlreadyExists(OrchestratorError):
    """The request would create something whose name is taken for good."""

    kind = ErrorKind.ALREADY_EXISTS


class FailedPrecondition(OrchestratorError):
    """The request is valid but the system is not in a state that allows it."""

    kind = ErrorKind.FAILED_PRECONDITION


class IllegalTransition(FailedPrecondition):
    """A job state change that the state machine does not allow."""


class Unauthenticated(OrchestratorError):
    """A missing, unknown, revoked or foreign bearer token."""

    kind = ErrorKind.UNAUTHENTICATED

    def __init__(self, message: str = "Invalid bearer token") -> None:
        super().__init__(message)


class BudgetExceeded(OrchestratorError):
    """The job's LLM policy refused a call: its call or token budget is used up (429), or, as
    :class:`ModelNotAllowed`, the model is not allowed (403). Always carries its refusal."""

    kind = ErrorKind.RESOURCE_EXHAUSTED

    def __init__(self, message: str, *, refusal: Refusal) -> None:
        super().__init__(message, refusal=refusal)


class ModelNotAllowed(BudgetExceeded):
    """The job may not use the model the request names."""

    kind = ErrorKind.PERMISSION_DENIED

    def __init__(self, message: str) -> None:
        super().__init__(message, refusal=Refusal.MODEL_NOT_ALLOWED)


class RateLimited(OrchestratorError):
    """A job sent more than its rate allows; it may send again after ``retry_after_s``."""

    kind = ErrorKind.RATE_LIMITED

    def __init__(self, message: str, retry_after_s: float) -> None:
        super().__init__(message, refusal=Refusal.RATE_LIMITED)
        self.retry_after_s = retry_after_s


class PayloadTooLarge(OrchestratorError):
    """A request body exceeds the configured limit."""

    kind = ErrorKind.PAYLOAD_TOO_LARGE


class TooLarge(OrchestratorError):
    """Something streamed to the orchestrator outgrew its configured limit."""

    kind = ErrorKind.TOO_LARGE


class Busy(OrchestratorError):
    """As many of these operations as allowed are already in progress; try again later."""

    kind = ErrorKind.RESOURCE_EXHAUSTED


class DeadlineExceeded(OrchestratorError):
    """An operation the orchestrator bounds in time did not finish within its bound."""

    kind = ErrorKind.DEADLINE_EXCEEDED


class ProviderError(OrchestratorError):
    """The upstream LLM provider failed; the message names its reason, never a key."""

    kind = ErrorKind.PROVIDER_FAILED


class ProviderNotConfigured(OrchestratorError):
    """No LLM provider is configured for this orchestrator."""

    kind = ErrorKind.PROVIDER_NOT_CONFIGURED


class EngineUnavailable(OrchestratorError):
    """The container engine cannot be reached."""

    kind = ErrorKind.UNAVAILABLE


class ConfigError(Exception):
    """A bad configuration value, raised at startup; the message names the variable."""
