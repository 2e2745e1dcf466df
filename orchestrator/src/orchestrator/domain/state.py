"""The job state machine: Creating → Running → Stopped | Failed, nothing else."""

from __future__ import annotations

from orchestrator.domain.jobs import JobState
from orchestrator.errors import IllegalTransition

ALLOWED_TRANSITIONS: dict[JobState, frozenset[JobState]] = {
    JobState.CREATING: frozenset({JobState.RUNNING, JobState.STOPPED, JobState.FAILED}),
    JobState.RUNNING: frozenset({JobState.STOPPED, JobState.FAILED}),
    JobState.STOPPED: frozenset(),
    JobState.FAILED: frozenset(),
}


def can_transition(current: JobState, target: JobState) -> bool:
    return target in ALLOWED_TRANSITIONS[current]


def check_transition(current: JobState, target: JobState) -> None:
    """Raises IllegalTransition unless ``current → target`` is allowed."""
    if not can_transition(current, target):
        raise IllegalTransition(
            f"job cannot go from {current.value} to {target.value}"
            + (" (it has already ended)" if current.is_terminal else "")
        )
