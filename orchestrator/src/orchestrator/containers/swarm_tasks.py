"""What a job's Swarm service is doing, read from its task and the node it is on: pure
functions over the engine's JSON, tested without an engine.

A lost node's task keeps ``CurrentState: running`` (stale) while the node is down, with
``restart-condition none`` nothing replaces it, and the manager only kills the orphaned container
once the node is back: "running on a node that is Down" is read as lost, at once.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from orchestrator.containers.backend import ContainerInfo
from orchestrator.containers.swarm_spec import NO_NEW_PRIVS_EXIT_CODE

SIGKILL_EXIT_CODE = 137
_BEFORE_RUNNING = frozenset(
    {"new", "allocated", "pending", "assigned", "accepted", "preparing", "ready", "starting"}
)
_ENDED = frozenset({"complete", "failed", "shutdown", "rejected", "orphaned", "remove"})


@dataclass(frozen=True)
class NodeState:
    """A Swarm node as the manager sees it."""

    hostname: str
    state: str  # ready, down, unknown, disconnected

    @property
    def down(self) -> bool:
        return self.state in ("down", "disconnected")


def nodes_by_id(rows: Sequence[Mapping[str, Any]]) -> dict[str, NodeState]:
    """``GET /nodes`` as id → state."""
    return {
        str(row.get("ID", "")): NodeState(
            hostname=str((row.get("Description") or {}).get("Hostname", "?")),
            state=str((row.get("Status") or {}).get("State", "unknown")),
        )
        for row in rows
    }


def latest_task(tasks: Sequence[Mapping[str, Any]]) -> Mapping[str, Any] | None:
    """The service's newest task (with one replica and no restarts there is one)."""
    if not tasks:
        return None
    return max(tasks, key=lambda task: int((task.get("Version") or {}).get("Index", 0)))


def task_container(task: Mapping[str, Any]) -> tuple[str, int]:
    """The id and host pid of the task's container on its node ("" and 0 before it exists)."""
    status = (task.get("Status") or {}).get("ContainerStatus") or {}
    return str(status.get("ContainerID") or ""), int(status.get("PID") or 0)


def service_info(
    service: Mapping[str, Any],
    tasks: Sequence[Mapping[str, Any]],
    nodes: Mapping[str, NodeState],
) -> ContainerInfo:
    """The job's service as a :class:`ContainerInfo` (its id is the service's id)."""
    spec = service.get("Spec") or {}
    base = ContainerInfo(
        container_id=str(service.get("ID", "")),
        name=str(spec.get("Name", "")),
        labels=dict(spec.get("Labels") or {}),
        running=False,
        status="created",
    )
    task = latest_task(tasks)
    if task is None:
        return base
    status = task.get("Status") or {}
    state = str(status.get("State", ""))
    node = nodes.get(str(task.get("NodeID", "")))
    started_at = _timestamp(status.get("Timestamp")) if state == "running" else None
    if node is not None and node.down and state not in _ENDED:
        return _replace(base, status="dead", lost_node=node.hostname)
    if state == "running":
        return _replace(base, running=True, status="running", started_at=started_at)
    if state in _BEFORE_RUNNING or not state:
        return _replace(base, status="created")
    raw_code = (status.get("ContainerStatus") or {}).get("ExitCode")
    exit_code = int(raw_code) if isinstance(raw_code, int) and state != "rejected" else None
    # Swarm reports no OOM flag. PID 1 of a container cannot be SIGKILLed from inside it, and
    # the orchestrator stops a job by scaling its service to zero first: a SIGKILL exit of a
    # service still asking for its replica is the kernel's OOM killer.
    replicas = ((spec.get("Mode") or {}).get("Replicated") or {}).get("Replicas", 1)
    oom = exit_code == SIGKILL_EXIT_CODE and replicas != 0
    ended = _replace(base, status="exited", exit_code=exit_code, oom_killed=oom)
    return _replace(ended, detail=exit_detail(tasks, nodes, ended))


def exit_detail(
    tasks: Sequence[Mapping[str, Any]], nodes: Mapping[str, NodeState], info: ContainerInfo
) -> str:
    """Why the task ended, in words, when the exit code alone does not say it."""
    task = latest_task(tasks)
    if task is None:
        return ""
    node = nodes.get(str(task.get("NodeID", "")))
    where = f" on node {node.hostname}" if node is not None else ""
    if info.exit_code == NO_NEW_PRIVS_EXIT_CODE:
        return (
            f'no-new-privileges is off{where}: set "no-new-privileges": true in that node\'s '
            "daemon.json and restart its dockerd (or SWARM_ALLOW_NEW_PRIVILEGES=1)"
        )
    status = task.get("Status") or {}
    if str(status.get("State", "")) == "rejected":
        return f"the task was rejected{where}: {status.get('Err', '')}".strip()
    return ""


def pending_reason(task: Mapping[str, Any] | None) -> str:
    """Why a task is not running yet, as the scheduler says (``no suitable node ...``)."""
    if task is None:
        return "no task was scheduled"
    status = task.get("Status") or {}
    return str(status.get("Err") or status.get("Message") or status.get("State") or "?")


def _replace(info: ContainerInfo, **changes: Any) -> ContainerInfo:
    from dataclasses import replace

    return replace(info, **changes)


def _timestamp(raw: object) -> datetime | None:
    if not isinstance(raw, str) or raw.startswith("0001"):
        return None
    with contextlib.suppress(ValueError):
        return datetime.fromisoformat(raw[:26].rstrip("Z") + "+00:00")
    return None
