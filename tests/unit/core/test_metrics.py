"""Metrics labels stay bounded; ``--since`` parses ISO times and ages."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from orchestrator.cli.jobs import CliError
from orchestrator.cli.usage import parse_since
from orchestrator.log_context import request_id_from_metadata
from orchestrator.metrics import Metrics


def test_unknown_models_and_provider_details_collapse_into_bounded_labels() -> None:
    metrics = Metrics(["gpt-4o-mini"])
    metrics.llm_call("scripted (replays a.yaml)", "gpt-4o-mini", 0.1, 3, 4)
    metrics.llm_call("openai (http://x)", "made-up-model-123", 0.1, 1, 1)
    metrics.job_ended("worker", "OOM_KILLED", 2.0)
    text = metrics.exposition().decode()
    assert 'ironclaw_llm_calls_total{model="gpt-4o-mini",provider="scripted"} 1.0' in text
    assert 'ironclaw_llm_calls_total{model="other",provider="openai"} 1.0' in text
    assert "made-up-model-123" not in text
    assert "a.yaml" not in text
    assert 'ironclaw_jobs_ended_total{mode="worker",reason="oom_killed"} 1.0' in text


def test_every_orchestrator_has_its_own_registry() -> None:
    a, b = Metrics(), Metrics()
    a.job_created("worker")
    assert 'ironclaw_jobs_created_total{mode="worker"} 1.0' in a.exposition().decode()
    assert 'ironclaw_jobs_created_total{mode="worker"}' not in b.exposition().decode()


def test_since_accepts_ages_and_iso_times() -> None:
    now = datetime(2025, 1, 31, 12, tzinfo=UTC)
    assert parse_since("", now) is None
    assert parse_since("2h", now) == now - timedelta(hours=2)
    assert parse_since("7d", now) == now - timedelta(days=7)
    assert parse_since("2025-01-30T00:00Z", now) == datetime(2025, 1, 30, tzinfo=UTC)
    with pytest.raises(CliError, match="--since"):
        parse_since("last tuesday", now)


def test_request_id_comes_from_metadata_when_well_formed() -> None:
    assert request_id_from_metadata([("x-request-id", "abc-1")]) == "abc-1"
    generated = request_id_from_metadata([("x-request-id", "bad id\nwith newline")])
    assert generated != "bad id\nwith newline"
    assert len(generated) == 32
