"""SIGTERM handling: Terminated is raised at once, or right after a deferred section."""

from __future__ import annotations

import signal

import pytest

from worker.termination import Terminated, sigterm_raises_terminated, termination_deferred


def test_sigterm_raises_terminated_and_the_handler_is_restored() -> None:
    before = signal.getsignal(signal.SIGTERM)
    with sigterm_raises_terminated(), pytest.raises(Terminated):
        signal.raise_signal(signal.SIGTERM)
    assert signal.getsignal(signal.SIGTERM) == before


def test_sigterm_inside_a_deferred_section_is_raised_when_it_ends() -> None:
    steps: list[str] = []

    def section() -> None:
        with termination_deferred():
            signal.raise_signal(signal.SIGTERM)
            steps.append("section finished")
        steps.append("after the section")

    with sigterm_raises_terminated(), pytest.raises(Terminated):
        section()
    assert steps == ["section finished"]


def test_deferred_section_without_signal_raises_nothing() -> None:
    with sigterm_raises_terminated(), termination_deferred():
        pass
