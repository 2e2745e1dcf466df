"""A Python client for the ironclaw orchestrator's control plane.

``Client`` (synchronous) and ``AsyncClient`` (asyncio) create jobs idempotently, follow them
across orchestrator restarts without losing or repeating an update, and wait for their result.
Every failure is an :class:`IronclawError`."""

from ironclaw_client.aio import AsyncClient
from ironclaw_client.client import Client, new_job_id
from ironclaw_client.config import ClientConfig
from ironclaw_client.errors import (
    AlreadyExists,
    Cancelled,
    FailedPrecondition,
    InvalidArgument,
    IronclawError,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
    ServerError,
    Timeout,
    TLSError,
    Unauthenticated,
    Unavailable,
)
from ironclaw_client.types import (
    CreatedJob,
    CredentialGrant,
    Event,
    GitWorkspace,
    Job,
    JobLimits,
    JobMode,
    JobResult,
    JobState,
    JobUpdate,
    LlmUsage,
    ResultUpdate,
    Snapshot,
    StateChanged,
    StatusUpdate,
    TerminalReason,
    UploadedWorkspace,
    UsageUpdate,
)

__all__ = [
    "AlreadyExists",
    "AsyncClient",
    "Cancelled",
    "Client",
    "ClientConfig",
    "CreatedJob",
    "CredentialGrant",
    "Event",
    "FailedPrecondition",
    "GitWorkspace",
    "InvalidArgument",
    "IronclawError",
    "Job",
    "JobLimits",
    "JobMode",
    "JobResult",
    "JobState",
    "JobUpdate",
    "LlmUsage",
    "NotFound",
    "PermissionDenied",
    "ResourceExhausted",
    "ResultUpdate",
    "ServerError",
    "Snapshot",
    "StateChanged",
    "StatusUpdate",
    "TLSError",
    "TerminalReason",
    "Timeout",
    "Unauthenticated",
    "Unavailable",
    "UploadedWorkspace",
    "UsageUpdate",
    "new_job_id",
]
