"""JOB_NETWORK=isolated on a Swarm without an engine: the job's overlay, the relays' uplink and
the relay service built from a job's network request, the job's service on its overlay, and
the request itself (the job's URL names the relay, the relay the bind address)."""

from __future__ import annotations

from datetime import UTC, datetime

from orchestrator.containers.backend import JobNetworkRequest
from orchestrator.containers.relay_script import RELAY_SCRIPT
from orchestrator.containers.spec import build_container_spec
from orchestrator.containers.swarm_network import (
    RELAY_ALIAS,
    build_job_network,
    build_relay_service,
    build_uplink_network,
    relay_nofile,
    uplink_name,
)
from orchestrator.containers.swarm_spec import SwarmPlacement, build_service
from orchestrator.domain.jobs import JobLimits, JobMode
from orchestrator.jobs.isolation import job_network_request
from orchestrator.service import container_host
from orchestrator.settings import Settings

JOB_ID = "8c5c1f3e-0000-4000-8000-0000000000aa"
SWARM_ENV = {
    "ORCHESTRATOR_INSTANCE": "unit",
    "CONTAINER_BACKEND": "swarm",
    "ORCHESTRATOR_HTTP_BIND": "10.9.8.1",
}
URL = f"https://{RELAY_ALIAS}:50052"
EGRESS_URL = f"http://{RELAY_ALIAS}:50053"


def _request(**env: str) -> JobNetworkRequest:
    return job_network_request(Settings.from_env({**SWARM_ENV, **env}), JOB_ID, URL, EGRESS_URL)


def test_swarm_jobs_are_isolated_by_default_and_name_their_relay() -> None:
    settings = Settings.from_env(SWARM_ENV)
    assert settings.job_network == "isolated"
    assert container_host(settings, "10.9.8.1") == RELAY_ALIAS
    bridge = Settings.from_env({**SWARM_ENV, "JOB_NETWORK": "bridge"})
    assert container_host(bridge, "10.9.8.1") == "10.9.8.1"
    assert container_host(Settings.from_env({}), "172.17.0.1") == "host.docker.internal"


def test_the_request_relays_to_the_bind_address_under_the_urls_host() -> None:
    request = _request(JOB_RELAY_MAX_CONNECTIONS="7")
    assert request.alias == RELAY_ALIAS
    assert request.upstream_host == "10.9.8.1"
    assert (request.port, request.extra_ports) == (50052, (50053,))
    assert request.relay_max_connections == 7
    assert request.instance == "unit"


def test_the_job_network_is_an_internal_overlay_of_its_own_labelled_with_the_job() -> None:
    network = build_job_network(_request())
    assert network["name"] == f"ironclaw-job-{JOB_ID}"
    assert network["driver"] == "overlay"
    assert network["internal"] is True
    assert network["attachable"] is False, "no docker run container can join a job's network"
    assert network["scope"] == "swarm"
    assert network["labels"] == {
        "ironclaw.network.instance": "unit",
        "ironclaw.network.job_id": JOB_ID,
    }
    # Never the job containers' label: reconciliation must not take it for a job.
    assert "ironclaw.instance" not in network["labels"]


def test_the_uplink_is_not_internal_and_names_no_job() -> None:
    uplink = build_uplink_network("unit")
    assert uplink["name"] == uplink_name("unit") == "ironclaw-uplink-unit"
    assert uplink["internal"] is False
    assert uplink["driver"] == "overlay"
    assert "ironclaw.network.job_id" not in uplink["labels"]
    assert uplink["labels"]["ironclaw.network.instance"] == "unit"


def test_the_relay_service_is_hardened_and_answers_only_on_the_jobs_network_as_the_alias() -> None:
    request = _request(JOB_RELAY_MAX_CONNECTIONS="10")
    relay = build_relay_service(
        request,
        network=f"ironclaw-job-{JOB_ID}",
        uplink="ironclaw-uplink-unit",
        constraints=("node.labels.pool==jobs",),
    )
    assert relay.name == f"ironclaw-relay-{JOB_ID}"
    assert relay.labels["ironclaw.network.job_id"] == JOB_ID
    assert "ironclaw.instance" not in relay.labels
    assert relay.endpoint_spec == {"Mode": "dnsrr"}
    template = relay.task_template
    container = template["ContainerSpec"]
    assert container["Command"] == ["python3", "-c", RELAY_SCRIPT]
    assert container["User"] == "1000:1000"
    assert container["ReadOnly"] is True
    assert container["CapabilityDrop"] == ["ALL"]
    assert container["CapabilityAdd"] == []
    assert container["Ulimits"] == [
        {"Name": "nofile", "Soft": relay_nofile(10), "Hard": relay_nofile(10)}
    ]
    env = dict(item.split("=", 1) for item in container["Env"])
    assert env["RELAY_UPSTREAM_HOST"] == "10.9.8.1"
    assert env["RELAY_PORTS"] == "50052,50053"
    assert env["RELAY_MAX_CONNECTIONS"] == "10"
    limits = template["Resources"]["Limits"]
    assert limits["MemoryBytes"] == 64 * 1024 * 1024
    assert limits["Pids"] == 64
    assert limits["NanoCPUs"] > 0
    assert template["Placement"]["Constraints"] == ["node.labels.pool==jobs"]
    assert template["RestartPolicy"]["Condition"] == "any"
    assert template["Networks"] == [
        {"Target": f"ironclaw-job-{JOB_ID}", "Aliases": [RELAY_ALIAS]},
        {"Target": "ironclaw-uplink-unit"},
    ]


def test_the_jobs_service_joins_its_network_only_with_a_dnsrr_endpoint() -> None:
    settings = Settings.from_env(SWARM_ENV)
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
    spec = build_container_spec(
        settings=settings,
        job_id=JOB_ID,
        mode=JobMode.WORKER,
        limits=limits,
        created_at=datetime.now(UTC),
        token="irc_x",
        orchestrator_url=URL,
        orchestrator_ca_pem="-----BEGIN CERTIFICATE-----\nx\n-----END CERTIFICATE-----\n",
        project_dir="/p",
        network=f"ironclaw-job-{JOB_ID}",
    )
    service = build_service(
        spec,
        placement=SwarmPlacement(),
        image_entrypoint=["ironclaw-worker"],
        image_cmd=[],
        guard_no_new_privileges=True,
        stop_grace_s=5,
    )
    assert service.task_template["Networks"] == [{"Target": f"ironclaw-job-{JOB_ID}"}]
    assert service.endpoint_spec == {"Mode": "dnsrr"}
    assert "Hosts" not in service.task_template["ContainerSpec"], (
        "no host entry: DNS names the relay"
    )
    env = dict(item.split("=", 1) for item in service.task_template["ContainerSpec"]["Env"])
    assert env["IRONCLAW_ORCHESTRATOR_URL"] == URL
    assert env["IRONCLAW_ORCHESTRATOR_CA"].startswith("-----BEGIN CERTIFICATE-----")
    bridge_spec = build_service(
        build_container_spec(
            settings=Settings.from_env({**SWARM_ENV, "JOB_NETWORK": "bridge"}),
            job_id=JOB_ID,
            mode=JobMode.WORKER,
            limits=limits,
            created_at=datetime.now(UTC),
            token="irc_x",
            orchestrator_url="https://10.9.8.1:50052",
            project_dir="/p",
        ),
        placement=SwarmPlacement(),
        image_entrypoint=["ironclaw-worker"],
        image_cmd=[],
        guard_no_new_privileges=True,
        stop_grace_s=5,
    )
    assert "Networks" not in bridge_spec.task_template
    assert bridge_spec.endpoint_spec is None
