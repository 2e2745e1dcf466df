"""JOB_NETWORK=isolated without an engine: settings, the spec, the relay request, subnets, and
the check of the projects base against the host path."""

from __future__ import annotations

import ipaddress
from datetime import UTC, datetime
from pathlib import Path

import pytest

from orchestrator.containers.docker_network import candidate_subnets
from orchestrator.containers.host_paths import check_mapping
from orchestrator.containers.spec import build_container_spec
from orchestrator.domain.jobs import JobLimits, JobMode
from orchestrator.errors import ConfigError, FailedPrecondition
from orchestrator.jobs.isolation import egress_relay_problem, job_network_request
from orchestrator.settings import Settings

JOB_ID = "6f1c4c1e-8a6e-4f0e-9d8e-1c2b3a4d5e6f"


def _spec(settings: Settings, network: str | None) -> object:
    now = datetime.now(UTC)
    limits = JobLimits(
        max_iterations=5,
        timeout_seconds=60,
        memory_mb=256,
        llm_token_budget=0,
        llm_call_budget=0,
        llm_max_tokens_per_call=100,
        claude_max_turns=5,
        claude_model="sonnet",
    )
    return build_container_spec(
        settings=settings,
        job_id=JOB_ID,
        mode=JobMode.WORKER,
        limits=limits,
        created_at=now,
        token="irc_x",
        orchestrator_url="http://host.docker.internal:50052",
        project_dir="/p",
        network=network,
    )


def test_job_network_setting_defaults_to_isolated_and_rejects_unknown_modes() -> None:
    assert Settings.from_env({}).job_network == "isolated"
    assert Settings.from_env({"JOB_NETWORK": "bridge"}).job_network == "bridge"
    with pytest.raises(ConfigError, match="JOB_NETWORK"):
        Settings.from_env({"JOB_NETWORK": "none"})
    with pytest.raises(ConfigError, match="JOB_NETWORK_POOL"):
        Settings.from_env({"JOB_NETWORK_POOL": "10.0.0.0/30"})


def test_isolated_spec_uses_the_job_network_without_a_host_gateway_entry() -> None:
    settings = Settings.from_env({})
    isolated = _spec(settings, f"ironclaw-job-{JOB_ID}")
    assert isolated.network == f"ironclaw-job-{JOB_ID}"  # type: ignore[attr-defined]
    assert dict(isolated.extra_hosts) == {}  # type: ignore[attr-defined]
    bridged = _spec(settings, None)
    assert bridged.network == "bridge"  # type: ignore[attr-defined]
    assert dict(bridged.extra_hosts) == {"host.docker.internal": "host-gateway"}  # type: ignore[attr-defined]


def test_relay_answers_as_the_url_host_and_forwards_only_its_port() -> None:
    settings = Settings.from_env({"JOB_NETWORK": "isolated", "ORCHESTRATOR_INSTANCE": "i1"})
    request = job_network_request(settings, JOB_ID, "http://orchestrator:7000")
    assert (request.upstream_host, request.port) == ("orchestrator", 7000)
    assert request.upstream_network == "bridge"
    assert request.relay_image == settings.worker_image
    assert request.instance == "i1"


def test_subnets_are_distinct_28s_inside_the_pool() -> None:
    pool = ipaddress.IPv4Network("10.213.0.0/16")
    subnets = candidate_subnets(JOB_ID, str(pool))
    assert len(set(subnets)) == len(subnets) == 64
    assert all(s.prefixlen == 28 and s.subnet_of(pool) for s in subnets)
    assert candidate_subnets(JOB_ID, str(pool)) == subnets  # deterministic per job


def test_projects_base_must_be_mounted_at_its_host_path() -> None:
    projects = Path("/srv/ironclaw/projects")
    same = {"Type": "bind", "Source": "/srv/ironclaw", "Destination": "/srv/ironclaw"}
    check_mapping(projects, [same])
    moved = {"Type": "bind", "Source": "/data/ic", "Destination": "/srv/ironclaw"}
    with pytest.raises(ConfigError, match=r"IRONCLAW_BASE_DIR.*host path /data/ic"):
        check_mapping(projects, [moved])
    volume = {"Type": "volume", "Source": "/var/lib/docker/x", "Destination": "/srv/ironclaw"}
    with pytest.raises(ConfigError, match="not bind-mounted"):
        check_mapping(projects, [volume])
    with pytest.raises(ConfigError, match="not bind-mounted"):
        check_mapping(projects, [])


def test_the_relay_is_bounded_by_its_settings() -> None:
    settings = Settings.from_env(
        {
            "JOB_NETWORK": "isolated",
            "JOB_RELAY_MAX_CONNECTIONS": "12",
            "ORCHESTRATOR_HTTP_HEADER_TIMEOUT_S": "4",
            "ORCHESTRATOR_HTTP_IDLE_TIMEOUT_S": "30",
            "LLM_TIMEOUT_S": "100",
            "LLM_MAX_RETRIES": "1",
        }
    )
    request = job_network_request(settings, JOB_ID, "http://orchestrator:7000")
    assert request.relay_max_connections == 12
    assert request.relay_first_byte_timeout_s == 4.0
    # Never shorter than an LLM call with its retries plus a keep-alive pause.
    assert request.relay_idle_timeout_s >= 2 * 100 + 30


def test_the_relay_forwards_the_gateways_port_too_when_the_job_goes_out_through_it() -> None:
    settings = Settings.from_env({"JOB_NETWORK": "isolated"})
    url = "http://host.docker.internal:50052"
    alone = job_network_request(settings, JOB_ID, url)
    assert (alone.port, alone.extra_ports) == (50052, ())
    both = job_network_request(settings, JOB_ID, url, "http://host.docker.internal:50053")
    assert (both.port, both.extra_ports) == (50052, (50053,))


@pytest.mark.parametrize(
    ("egress_url", "problem"),
    [
        ("http://gateway.internal:50053", "must name the worker API's host"),
        ("http://host.docker.internal:50052", "has the worker API's port"),
    ],
)
def test_a_gateway_url_the_relay_cannot_answer_for_is_refused(
    egress_url: str, problem: str
) -> None:
    url = "http://host.docker.internal:50052"
    assert problem in (egress_relay_problem(url, egress_url) or "")
    with pytest.raises(FailedPrecondition, match=problem):
        job_network_request(Settings.from_env({}), JOB_ID, url, egress_url)
