"""Per-job isolated networks on Docker (``JOB_NETWORK=isolated``), blocking docker-py calls.

Each job gets its own network, ``internal`` (no route out of it) and without an address of the
host on its bridge (``inhibit_ipv4``), so the job container can reach neither the internet, nor
the host's ports, nor any other container. Its one peer is a relay container that answers under
the worker API's host name and forwards that one port to the worker API over the upstream
network (the default bridge, where the orchestrator listens on the gateway). A network per job
is what keeps jobs apart: on one shared internal network, blocking job-to-job traffic would
also block the path to the orchestrator.

Networks and relays carry their own labels, not ``ironclaw.instance``: they are never taken
for job containers by reconciliation or the exit watcher.
"""

from __future__ import annotations

import contextlib
import hashlib
import ipaddress
import time
from typing import Any

import docker.errors

from orchestrator.containers.backend import JobNetworkRequest
from orchestrator.containers.relay_script import RELAY_SCRIPT
from orchestrator.errors import OrchestratorError

LABEL_NETWORK_INSTANCE = "ironclaw.network.instance"
LABEL_NETWORK_JOB_ID = "ironclaw.network.job_id"
SUBNET_PREFIX = 28
RELAY_READY_TIMEOUT_S = 10.0


class JobNetworkFailed(OrchestratorError):
    """The job's isolated network or its relay could not be set up."""


def network_name(job_id: str) -> str:
    return f"ironclaw-job-{job_id}"


def relay_name(job_id: str) -> str:
    return f"ironclaw-relay-{job_id}"


def _labels(instance: str, job_id: str) -> dict[str, str]:
    return {LABEL_NETWORK_INSTANCE: instance, LABEL_NETWORK_JOB_ID: job_id}


def candidate_subnets(job_id: str, pool: str) -> list[ipaddress.IPv4Network]:
    """The pool's /28 subnets, starting at one derived from the job id (fewer collisions)."""
    network = ipaddress.IPv4Network(pool)
    count = 2 ** (SUBNET_PREFIX - network.prefixlen)
    start = int(hashlib.sha256(job_id.encode()).hexdigest(), 16) % count
    size = 2 ** (32 - SUBNET_PREFIX)
    base = int(network.network_address)
    return [
        ipaddress.IPv4Network((base + ((start + i) % count) * size, SUBNET_PREFIX))
        for i in range(min(count, 64))
    ]


def create_job_network(api: Any, request: JobNetworkRequest) -> str:
    name = network_name(request.job_id)
    labels = _labels(request.instance, request.job_id)
    if not _exists(api.inspect_network, name):
        _create_network(api, name, labels, request)
    _start_relay(api, name, labels, request)
    return name


def _exists(inspect: Any, name: str) -> bool:
    try:
        inspect(name)
    except docker.errors.NotFound:
        return False
    return True


def _create_network(api: Any, name: str, labels: dict[str, str], r: JobNetworkRequest) -> None:
    last = ""
    for subnet in candidate_subnets(r.job_id, r.subnet_pool):
        hosts = subnet.hosts()
        gateway = str(next(hosts))  # reserved by the engine, never on the host (inhibit_ipv4)
        ipam = docker.types.IPAMConfig(
            pool_configs=[docker.types.IPAMPool(subnet=str(subnet), gateway=gateway)]
        )
        try:
            api.create_network(
                name,
                driver="bridge",
                internal=True,
                ipam=ipam,
                labels=labels,
                options={"com.docker.network.bridge.inhibit_ipv4": "true"},
                check_duplicate=True,
            )
            return
        except docker.errors.APIError as exc:
            last = str(exc.explanation or exc)
            if "overlap" in last.lower():
                continue  # taken by another job or network: try the next subnet
            if exc.status_code == 409:
                return  # created meanwhile by a concurrent call
            raise JobNetworkFailed(f"creating the job network {name} failed: {last}") from exc
    raise JobNetworkFailed(
        f"no free /{SUBNET_PREFIX} subnet for the job network in JOB_NETWORK_POOL="
        f"{r.subnet_pool}: {last}"
    )


def _start_relay(api: Any, network: str, labels: dict[str, str], r: JobNetworkRequest) -> None:
    name = relay_name(r.job_id)
    if _exists(api.inspect_container, name):
        state = api.inspect_container(name).get("State") or {}
        if state.get("Running"):
            return
        api.remove_container(name, force=True)
    extra_hosts = (
        {"host.docker.internal": "host-gateway"} if r.upstream_network == "bridge" else None
    )
    # Two descriptors per relayed connection, one per refused one while it is aborted, and a
    # margin for the connections asyncio accepts in a batch (up to the backlog, several batches
    # before their handlers run and abort them): without it a flood exhausts the limit before
    # the cap can refuse anything, and accept stalls for a second at a time.
    nofile = 4 * r.relay_max_connections + 1024
    host_config = api.create_host_config(
        network_mode=r.upstream_network,
        extra_hosts=extra_hosts,
        mem_limit=64 * 1024 * 1024,
        memswap_limit=64 * 1024 * 1024,
        pids_limit=64,
        cap_drop=["ALL"],
        security_opt=["no-new-privileges:true"],
        read_only=True,
        restart_policy={"Name": "unless-stopped"},
        # Its connection cap keeps it far below this; the limit bounds it whatever happens.
        ulimits=[docker.types.Ulimit(name="nofile", soft=nofile, hard=nofile)],
    )
    try:
        created = api.create_container(
            image=r.relay_image,
            entrypoint=["python3", "-c", RELAY_SCRIPT],
            command=[],
            name=name,
            environment={
                "RELAY_UPSTREAM_HOST": r.upstream_host,
                "RELAY_PORTS": ",".join(str(port) for port in (r.port, *r.extra_ports)),
                "RELAY_MAX_CONNECTIONS": str(r.relay_max_connections),
                "RELAY_FIRST_BYTE_TIMEOUT_S": str(r.relay_first_byte_timeout_s),
                "RELAY_IDLE_TIMEOUT_S": str(r.relay_idle_timeout_s),
            },
            labels=labels,
            user="65534:65534",
            host_config=host_config,
            detach=True,
        )
        relay_id = str(created["Id"])
        # The job container finds the relay under the worker API's host name.
        api.connect_container_to_network(relay_id, network, aliases=[r.alias or r.upstream_host])
        api.start(relay_id)
    except docker.errors.APIError as exc:
        with contextlib.suppress(Exception):
            api.remove_container(name, force=True)
        text = exc.explanation or str(exc)
        raise JobNetworkFailed(f"starting the worker-API relay {name} failed: {text}") from exc
    deadline = time.monotonic() + RELAY_READY_TIMEOUT_S
    tail = ""
    try:
        while time.monotonic() < deadline:
            if b"relay ready" in api.logs(relay_id, stdout=True, stderr=True):
                return
            state = api.inspect_container(relay_id).get("State") or {}
            if not state.get("Running"):
                break
            time.sleep(0.05)
        tail = api.logs(relay_id, stdout=True, stderr=True, tail=20).decode("utf-8", "replace")
    except docker.errors.APIError as exc:  # removed meanwhile
        tail = str(exc.explanation or exc)
    with contextlib.suppress(Exception):
        api.remove_container(relay_id, force=True)
    raise JobNetworkFailed(f"the worker-API relay {name} did not start: {tail.strip()[-500:]}")


def remove_job_network(api: Any, instance: str, job_id: str) -> None:
    with contextlib.suppress(docker.errors.NotFound):
        info = api.inspect_container(relay_name(job_id))
        if (info.get("Config") or {}).get("Labels", {}).get(LABEL_NETWORK_INSTANCE) == instance:
            with contextlib.suppress(docker.errors.NotFound):
                api.remove_container(info["Id"], force=True)
    with contextlib.suppress(docker.errors.NotFound):
        net = api.inspect_network(network_name(job_id))
        if (net.get("Labels") or {}).get(LABEL_NETWORK_INSTANCE) != instance:
            return
        # Endpoints of containers still being removed can linger a moment.
        for attempt in range(20):
            try:
                api.remove_network(net["Id"])
                return
            except docker.errors.NotFound:
                return
            except docker.errors.APIError:
                if attempt == 19:
                    raise
                time.sleep(0.25)


def list_job_networks(api: Any, instance: str) -> list[str]:
    rows = api.networks(filters={"label": f"{LABEL_NETWORK_INSTANCE}={instance}"})
    relays = api.containers(all=True, filters={"label": f"{LABEL_NETWORK_INSTANCE}={instance}"})
    ids = {str((row.get("Labels") or {}).get(LABEL_NETWORK_JOB_ID, "")) for row in rows}
    ids |= {str((row.get("Labels") or {}).get(LABEL_NETWORK_JOB_ID, "")) for row in relays}
    return sorted(i for i in ids if i)
