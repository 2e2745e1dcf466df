"""Whether each Swarm node that may run jobs gives containers no-new-privileges.

A service cannot ask for it (API 1.41) and ``docker inspect`` does not show it: it comes from
each node's daemon setting, and only a process on the node can tell, from its own
``NoNewPrivs`` in ``/proc/self/status``. A global service with one short task per eligible node
asks; each task's exit code is the answer (0: on). Blocking docker-py calls.
"""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import Sequence
from typing import Any

import docker.errors

from orchestrator.containers.swarm_tasks import nodes_by_id
from orchestrator.errors import EngineUnavailable

LABEL_PROBE = "ironclaw.probe"
PROBE_TIMEOUT_S = 60.0
_PROBE_COMMAND = "grep -q '^NoNewPrivs:[[:space:]]*1' /proc/self/status"
_ENDED = ("complete", "failed", "shutdown", "rejected", "orphaned")


def probe_no_new_privileges(
    api: Any, image: str, instance: str, constraints: Sequence[str]
) -> list[str]:
    """The hostnames of the eligible nodes whose containers lack no-new-privileges."""
    name = f"ironclaw-probe-nnp-{uuid.uuid4().hex[:12]}"
    created = api.create_service(
        {
            "ContainerSpec": {
                "Image": image,
                "Command": ["/bin/sh", "-c", _PROBE_COMMAND],
                "User": "65534:65534",
                "ReadOnly": True,
                "CapabilityDrop": ["ALL"],
                "Labels": {LABEL_PROBE: "no-new-privileges"},
            },
            "Resources": {"Limits": {"MemoryBytes": 32 << 20, "Pids": 16}},
            "RestartPolicy": {"Condition": "none", "MaxAttempts": 0},
            "Placement": {"Constraints": list(constraints)},
        },
        name=name,
        labels={LABEL_PROBE: "no-new-privileges", "ironclaw.probe.instance": instance},
        mode={"Global": {}},
    )
    service_id = str(created["ID"])
    try:
        return _answers(api, service_id)
    finally:
        with contextlib.suppress(docker.errors.APIError):
            api.remove_service(service_id)


def _answers(api: Any, service_id: str) -> list[str]:
    deadline = time.monotonic() + PROBE_TIMEOUT_S
    while time.monotonic() < deadline:
        tasks = api.tasks(filters={"service": service_id})
        states = [str((task.get("Status") or {}).get("State", "")) for task in tasks]
        if tasks and all(state in _ENDED for state in states):
            nodes = nodes_by_id(api.nodes())
            without = []
            for task in tasks:
                status = task.get("Status") or {}
                code = (status.get("ContainerStatus") or {}).get("ExitCode")
                node = nodes.get(str(task.get("NodeID", "")))
                hostname = node.hostname if node else str(task.get("NodeID", "?"))
                if status.get("State") != "complete" or code != 0:
                    if status.get("State") == "rejected":
                        raise EngineUnavailable(
                            f"the no-new-privileges probe could not run on node {hostname}: "
                            f"{status.get('Err', '?')} (is the image there?)"
                        )
                    without.append(hostname)
            return sorted(without)
        time.sleep(0.2)
    raise EngineUnavailable(
        f"the no-new-privileges probe did not finish on every node within {PROBE_TIMEOUT_S:g} s"
    )
