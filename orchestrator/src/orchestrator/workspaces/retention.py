"""When an uploaded workspace may go: a pure decision from its claims and its jobs' ends.

An upload no job was created on is kept ``unused_retain_s`` from its upload. One that jobs
use is kept while any of them runs and ``retain_s`` after the last one ended (so its result
can be downloaded). A job the orchestrator no longer knows (cleaned up, or refused after it
claimed the upload) counts as ended when it claimed it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass


@dataclass(frozen=True)
class Claim:
    """A job created on an upload, and when (seconds since the epoch)."""

    job_id: str
    at: float


@dataclass(frozen=True)
class JobEnd:
    """What retention needs to know of a job: whether it still runs, and when it ended
    (None: unknown, or still running)."""

    live: bool
    ended_at: float | None = None


LIVE = JobEnd(live=True)
UNKNOWN = JobEnd(live=False)


def expires_at(
    created_at: float,
    claims: Iterable[Claim],
    job_end: Callable[[str], JobEnd],
    retain_s: float,
    unused_retain_s: float,
) -> float | None:
    """When the upload may be removed (seconds since the epoch); None while a job uses it."""
    latest: float | None = None
    for claim in claims:
        end = job_end(claim.job_id)
        if end.live:
            return None
        ended = end.ended_at if end.ended_at is not None else claim.at
        latest = ended if latest is None else max(latest, ended)
    if latest is None:
        return created_at + unused_retain_s
    return latest + retain_s
