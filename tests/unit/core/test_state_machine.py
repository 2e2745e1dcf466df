from __future__ import annotations

import pytest

from orchestrator.domain.jobs import JobState, TerminalReason
from orchestrator.domain.state import can_transition, check_transition
from orchestrator.errors import IllegalTransition

ALLOWED = {
    (JobState.CREATING, JobState.RUNNING),
    (JobState.CREATING, JobState.STOPPED),
    (JobState.CREATING, JobState.FAILED),
    (JobState.RUNNING, JobState.STOPPED),
    (JobState.RUNNING, JobState.FAILED),
}


@pytest.mark.parametrize("current", list(JobState))
@pytest.mark.parametrize("target", list(JobState))
def test_only_forward_transitions_are_allowed(current: JobState, target: JobState) -> None:
    assert can_transition(current, target) == ((current, target) in ALLOWED)
    if (current, target) in ALLOWED:
        check_transition(current, target)
    else:
        with pytest.raises(IllegalTransition):
            check_transition(current, target)


def test_a_terminal_state_says_so_in_the_refusal() -> None:
    with pytest.raises(IllegalTransition, match="already ended"):
        check_transition(JobState.STOPPED, JobState.RUNNING)


@pytest.mark.parametrize("reason", list(TerminalReason))
def test_every_reason_ends_in_a_terminal_state(reason: TerminalReason) -> None:
    expected = (
        JobState.STOPPED
        if reason in (TerminalReason.COMPLETED, TerminalReason.STOPPED_BY_OPERATOR)
        else JobState.FAILED
    )
    assert reason.terminal_state is expected
    assert reason.terminal_state.is_terminal
