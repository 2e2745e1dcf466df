"""Agent mode at admission: a job names a catalogue entry and nothing else about what runs; the
catalogue file is read when it changes, a broken one is named, an unknown agent is refused with
the known names; and the entry is kept with the job through the store."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from orchestrator.agent_catalog import AgentCatalog
from orchestrator.domain.jobs import CreateJobRequest, JobLimitOverrides, JobMode
from orchestrator.errors import ConfigError, FailedPrecondition, InvalidArgument
from orchestrator.jobs.admission import admit
from orchestrator.jobs.persistence import record_from_json, record_to_json, snapshot_from_json
from orchestrator.settings import Settings
from tests.helpers import job_record
from tests.unit.core.test_admission import no_tools

TINY: dict[str, Any] = {
    "image": "ironclaw-test-agents:latest",
    "command": ["tiny-agent", "--model", "{model}", "{task}"],
    "api": "anthropic",
    "key_env": "ANTHROPIC_API_KEY",
    "base_url_env": "ANTHROPIC_BASE_URL",
    "model": "claude-sonnet-5-5",
}


def write_catalogue(base: Path, agents: dict[str, Any]) -> None:
    path = base / "agents.json"
    path.write_text(json.dumps({"agents": agents}))
    # A new stamp even within the file system's time resolution.
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings.from_env({"IRONCLAW_BASE_DIR": str(tmp_path), "ANTHROPIC_API_KEY": "k"})


@pytest.fixture
def catalog(tmp_path: Path) -> AgentCatalog:
    write_catalogue(tmp_path, {"tiny": TINY, "other": {**TINY, "model": "claude-opus-5-5"}})
    return AgentCatalog(tmp_path)


def _admit(settings: Settings, catalog: AgentCatalog, **fields: Any) -> Any:
    request = CreateJobRequest(**{"task": "write hello.txt", "mode": JobMode.AGENT, **fields})
    return admit(request, settings, no_tools, catalog.entry)


def test_an_agent_job_gets_its_entry_and_the_entry_s_model(
    settings: Settings, catalog: AgentCatalog
) -> None:
    job = _admit(settings, catalog, agent="tiny")
    assert job.mode is JobMode.AGENT
    assert job.agent is not None
    assert job.agent.image == "ironclaw-test-agents:latest"
    assert job.limits.claude_model == "claude-sonnet-5-5"
    # The worker's deadline and memory: an agent is a coding job like a worker's.
    assert job.limits.timeout_seconds == settings.worker_timeout_s
    assert job.limits.memory_mb == settings.worker_memory_mb
    other = _admit(settings, catalog, agent="other", limits=JobLimitOverrides(claude_model="m-2"))
    assert other.limits.claude_model == "m-2"


def test_an_unknown_agent_is_refused_with_the_known_names(
    settings: Settings, catalog: AgentCatalog
) -> None:
    with pytest.raises(InvalidArgument, match=r"agent 'aider' is not in the catalogue \(known: "):
        _admit(settings, catalog, agent="aider")
    with pytest.raises(InvalidArgument, match="known: other, tiny"):
        _admit(settings, catalog, agent="aider")


def test_agent_mode_needs_an_agent_and_an_agent_needs_agent_mode(
    settings: Settings, catalog: AgentCatalog
) -> None:
    with pytest.raises(InvalidArgument, match="needs the name of an agent"):
        _admit(settings, catalog)
    with pytest.raises(InvalidArgument, match="agents run in agent mode"):
        _admit(settings, catalog, agent="tiny", mode=JobMode.WORKER)
    with pytest.raises(InvalidArgument, match="runs its command once"):
        _admit(settings, catalog, agent="tiny", wait_for_prompts=True)
    with pytest.raises(InvalidArgument, match="worker-mode jobs only"):
        _admit(settings, catalog, agent="tiny", mcp_servers=("github",))


def test_an_anthropic_agent_needs_the_orchestrator_s_anthropic_credential(
    tmp_path: Path, catalog: AgentCatalog
) -> None:
    bare = Settings.from_env({"IRONCLAW_BASE_DIR": str(tmp_path)})
    with pytest.raises(FailedPrecondition, match="needs ANTHROPIC_API_KEY"):
        _admit(bare, catalog, agent="tiny")


def test_the_catalogue_is_read_again_when_it_changes_and_a_broken_one_is_named(
    tmp_path: Path, settings: Settings, catalog: AgentCatalog
) -> None:
    assert catalog.check() == 2
    write_catalogue(tmp_path, {"tiny": {**TINY, "api": "gemini"}})
    with pytest.raises(FailedPrecondition, match=r"catalogue is invalid: .*agent 'tiny': api"):
        _admit(settings, catalog, agent="tiny")
    with pytest.raises(ConfigError, match=r"agents\.json: agent 'tiny'"):
        catalog.check()
    write_catalogue(tmp_path, {"fresh": TINY})
    assert _admit(settings, catalog, agent="fresh").agent.name == "fresh"
    (tmp_path / "agents.json").unlink()
    with pytest.raises(InvalidArgument, match="defines no agent"):
        _admit(settings, catalog, agent="fresh")
    assert catalog.check() == 0


def test_the_entry_is_kept_with_the_job_in_the_store(
    settings: Settings, catalog: AgentCatalog
) -> None:
    entry = catalog.entry("tiny")
    record = job_record(mode=JobMode.AGENT, agent=entry)
    stored = json.loads(json.dumps(record_to_json(record)))
    assert record_from_json(stored, 100).agent == entry
    assert snapshot_from_json(stored).agent == entry
    legacy = {key: value for key, value in stored.items() if key != "agent"}
    assert snapshot_from_json(legacy).agent is None
