"""Per-job isolated networks on a Swarm (``JOB_NETWORK=isolated``, ``CONTAINER_BACKEND=swarm``).

Each job gets its own ``internal`` overlay network: no route out of it, no docker_gwbridge, so
its task reaches neither the internet, nor its node, nor the host, nor any other job. Its one
peer is the job's relay service, which answers there under :data:`RELAY_ALIAS` (the host of the
job's worker-API URL) and forwards the worker API's port (and the egress gateway's) to the
address the worker API is bound to (``ORCHESTRATOR_HTTP_BIND``), through one shared,
non-internal overlay of the instance (:func:`uplink_name`) whose only purpose is to give relays
their node's docker_gwbridge. Relays are the only services on the uplink; jobs never are.

Both services use ``dnsrr`` endpoints: the VIP mode needs IPVS, which not every node has, and a
job needs no virtual address, only the relay's name. The overlay's subnet comes from the Swarm's
default address pool (``docker swarm init --default-addr-pool``): the manager hands out a free
one per network, so no subnet bookkeeping is needed here (JOB_NETWORK_POOL is the one-host
backend's).

The builders are pure functions (tested without an engine); the rest are blocking docker-py
calls for the backend's executor. Networks and relays carry the ``ironclaw.network.*`` labels,
never ``ironclaw.instance``: reconciliation and the exit watcher never take them for jobs.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Sequence
from typing import Any

import docker.errors

from orchestrator.containers.backend import JobNetworkRequest
from orchestrator.containers.docker_network import (
    LABEL_NETWORK_INSTANCE,
    LABEL_NETWORK_JOB_ID,
    JobNetworkFailed,
    network_name,
    relay_name,
)
from orchestrator.containers.relay_script import RELAY_SCRIPT
from orchestrator.containers.swarm_spec import ServiceDefinition

# The name under which a job finds its relay, and so the worker API (its URL's host and a
# subject name of the worker API's certificate). A fixed name: the job's URL does not depend on
# where the orchestrator runs.
RELAY_ALIAS = "ironclaw-orchestrator"
LABEL_UPLINK = "ironclaw.network.uplink"
RELAY_USER = "1000:1000"
RELAY_MEMORY_BYTES = 64 * 1024 * 1024
RELAY_PIDS = 64
RELAY_NANO_CPUS = 500_000_000  # half a CPU: forwarding bytes needs little
RELAY_READY_TIMEOUT_S = 30.0
NETWORK_REMOVE_TIMEOUT_S = 30.0


def uplink_name(instance: str) -> str:
    """The instance's shared overlay through which relays reach the worker API."""
    return f"ironclaw-uplink-{instance}"


def job_network_labels(instance: str, job_id: str) -> dict[str, str]:
    return {LABEL_NETWORK_INSTANCE: instance, LABEL_NETWORK_JOB_ID: job_id}


def build_job_network(request: JobNetworkRequest) -> dict[str, Any]:
    """The arguments of ``create_network`` for the job's own overlay: internal (no gateway
    out), not attachable (only services, never a ``docker run`` container, join it)."""
    return {
        "name": network_name(request.job_id),
        "driver": "overlay",
        "internal": True,
        "attachable": False,
        "scope": "swarm",
        "labels": job_network_labels(request.instance, request.job_id),
        "check_duplicate": True,
    }


def build_uplink_network(instance: str) -> dict[str, Any]:
    """The arguments of ``create_network`` for the relays' shared overlay: not internal, so a
    relay's task is also on its node's docker_gwbridge, its way to ORCHESTRATOR_HTTP_BIND."""
    return {
        "name": uplink_name(instance),
        "driver": "overlay",
        "internal": False,
        "attachable": False,
        "scope": "swarm",
        "labels": {LABEL_NETWORK_INSTANCE: instance, LABEL_UPLINK: "1"},
        "check_duplicate": True,
    }


def relay_nofile(max_connections: int) -> int:
    """Two descriptors per relayed connection and a margin for the batches asyncio accepts
    before the cap refuses them (as the one-host relay: docker_network.py)."""
    return 4 * max_connections + 1024


def build_relay_service(
    request: JobNetworkRequest,
    *,
    network: str,
    uplink: str,
    constraints: Sequence[str] = (),
) -> ServiceDefinition:
    """The job's relay service: hardened like a job's (read-only root, no capability, uid 1000,
    memory, pids, CPU and descriptor limits), restarted if it dies (the job's calls would fail
    until it is back), on the job's network under :data:`RELAY_ALIAS` and on the uplink."""
    nofile = relay_nofile(request.relay_max_connections)
    ports = ",".join(str(port) for port in (request.port, *request.extra_ports))
    container: dict[str, Any] = {
        "Image": request.relay_image,
        "Command": ["python3", "-c", RELAY_SCRIPT],
        "Args": [],
        "Env": [
            f"RELAY_UPSTREAM_HOST={request.upstream_host}",
            f"RELAY_PORTS={ports}",
            f"RELAY_MAX_CONNECTIONS={request.relay_max_connections}",
            f"RELAY_FIRST_BYTE_TIMEOUT_S={request.relay_first_byte_timeout_s}",
            f"RELAY_IDLE_TIMEOUT_S={request.relay_idle_timeout_s}",
        ],
        "Labels": job_network_labels(request.instance, request.job_id),
        "User": RELAY_USER,
        "ReadOnly": True,
        "CapabilityDrop": ["ALL"],
        "CapabilityAdd": [],
        "Init": False,
        "StopGracePeriod": 1_000_000_000,
        "Ulimits": [{"Name": "nofile", "Soft": nofile, "Hard": nofile}],
    }
    task_template: dict[str, Any] = {
        "ContainerSpec": container,
        "Resources": {
            "Limits": {
                "MemoryBytes": RELAY_MEMORY_BYTES,
                "Pids": RELAY_PIDS,
                "NanoCPUs": RELAY_NANO_CPUS,
            },
            "Reservations": {},
        },
        "RestartPolicy": {"Condition": "any", "Delay": 1_000_000_000, "MaxAttempts": 0},
        "Placement": {"Constraints": list(constraints)},
        "Networks": [
            {"Target": network, "Aliases": [request.alias or RELAY_ALIAS]},
            {"Target": uplink},
        ],
    }
    return ServiceDefinition(
        name=relay_name(request.job_id),
        labels=job_network_labels(request.instance, request.job_id),
        task_template=task_template,
        endpoint_spec={"Mode": "dnsrr"},
    )


# ---- blocking engine calls (the backend's executor) -------------------------------------------


def create_job_network(api: Any, request: JobNetworkRequest, constraints: Sequence[str]) -> str:
    """The job's overlay and relay, created if missing; returns once the relay is ready.
    Idempotent: a second call for the same job finds both and waits for the relay."""
    name = network_name(request.job_id)
    uplink = uplink_name(request.instance)
    _ensure_network(api, build_uplink_network(request.instance))
    _ensure_network(api, build_job_network(request))
    relay = build_relay_service(request, network=name, uplink=uplink, constraints=constraints)
    service_id = _ensure_relay(api, relay)
    _wait_ready(api, service_id, relay.name)
    return name


def _ensure_network(api: Any, arguments: dict[str, Any]) -> None:
    name = arguments["name"]
    if _find_network(api, name) is not None:
        return
    try:
        api.create_network(**arguments)
    except docker.errors.APIError as exc:
        if exc.status_code == 409 or "already exists" in str(exc.explanation or exc):
            return  # created meanwhile by a concurrent call
        text = exc.explanation or str(exc)
        raise JobNetworkFailed(f"creating the Swarm network {name} failed: {text}") from exc


def _find_network(api: Any, name: str) -> dict[str, Any] | None:
    # ``names`` filters by prefix-free substring on some engines: match the name exactly.
    for row in api.networks(names=[name]):
        if row.get("Name") == name:
            return dict(row)
    return None


def _ensure_relay(api: Any, relay: ServiceDefinition) -> str:
    with contextlib.suppress(docker.errors.NotFound):
        return str(api.inspect_service(relay.name)["ID"])
    try:
        created = api.create_service(
            relay.task_template,
            name=relay.name,
            labels=relay.labels,
            mode=relay.mode,
            endpoint_spec=relay.endpoint_spec,
        )
    except docker.errors.APIError as exc:
        if exc.status_code == 409:
            return str(api.inspect_service(relay.name)["ID"])
        text = exc.explanation or str(exc)
        raise JobNetworkFailed(
            f"creating the worker-API relay {relay.name} failed: {text}"
        ) from exc
    return str(created["ID"])


def _wait_ready(api: Any, service_id: str, name: str) -> None:
    """Until the relay's task runs and has said it listens; else the relay is removed and the
    job refused with what its task or log said."""
    deadline = time.monotonic() + RELAY_READY_TIMEOUT_S
    reason = "no task yet"
    while time.monotonic() < deadline:
        tasks = api.tasks(filters={"service": service_id, "desired-state": "running"})
        states = [str((task.get("Status") or {}).get("State", "")) for task in tasks]
        if "running" in states:
            logs = api.service_logs(service_id, stdout=True, stderr=True, follow=False)
            if b"relay ready" in _joined(logs):
                return
            reason = "running, not listening yet"
        elif tasks:
            status = tasks[0].get("Status") or {}
            reason = f"{status.get('State', '?')}: {status.get('Err') or status.get('Message')}"
        time.sleep(0.05)
    with contextlib.suppress(Exception):
        api.remove_service(service_id)
    raise JobNetworkFailed(
        f"the worker-API relay {name} was not ready within {RELAY_READY_TIMEOUT_S:g} s: {reason}"
    )


def _joined(raw: Any) -> bytes:
    if isinstance(raw, bytes):
        return raw
    return b"".join(chunk for chunk in raw if isinstance(chunk, bytes))


def remove_job_network(api: Any, instance: str, job_id: str) -> None:
    """Removes the job's relay, then its overlay once no task of it is left on any node."""
    with contextlib.suppress(docker.errors.NotFound):
        service = api.inspect_service(relay_name(job_id))
        labels = (service.get("Spec") or {}).get("Labels") or {}
        if labels.get(LABEL_NETWORK_INSTANCE) == instance:
            with contextlib.suppress(docker.errors.NotFound):
                api.remove_service(service["ID"])
    row = _find_network(api, network_name(job_id))
    if row is None or (row.get("Labels") or {}).get(LABEL_NETWORK_INSTANCE) != instance:
        return
    # The tasks of the job and its relay leave their nodes a moment after their services: the
    # manager refuses to remove a network still in use until then.
    deadline = time.monotonic() + NETWORK_REMOVE_TIMEOUT_S
    while True:
        try:
            api.remove_network(row["Id"])
            return
        except docker.errors.NotFound:
            return
        except docker.errors.APIError:
            if time.monotonic() >= deadline:
                raise
            time.sleep(0.2)


def list_job_networks(api: Any, instance: str) -> list[str]:
    """The job ids of this instance's job overlays and relays (the uplink names no job)."""
    label = {"label": f"{LABEL_NETWORK_INSTANCE}={instance}"}
    ids = {
        str((row.get("Labels") or {}).get(LABEL_NETWORK_JOB_ID, ""))
        for row in api.networks(filters=label)
    }
    for service in api.services(filters=label):
        labels = (service.get("Spec") or {}).get("Labels") or {}
        ids.add(str(labels.get(LABEL_NETWORK_JOB_ID, "")))
    return sorted(i for i in ids if i)
