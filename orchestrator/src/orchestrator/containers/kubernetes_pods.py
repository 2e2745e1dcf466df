"""What a job's Pod is doing, read from its status: pure functions over the API's JSON
(camelCase dicts, as ``ApiClient.sanitize_for_serialization`` gives them), tested without a
cluster.

The words the job manager already knows are reused: an exit code, ``oom_killed``, a lost node
(``NODE_LOST``) and a detail for the rest (an eviction, a deadline). A pod leaves a lost node
in one of three ways, each read as lost: the node controller's ``status.reason: NodeLost``
(older clusters), a ``DisruptionTarget`` condition set by the taint manager (the node stayed
NotReady or unreachable past the pod's toleration, KUBERNETES_NODE_LOST_S) or by the pod
garbage collector (the node was deleted), or the pod vanishing before it ended
(:func:`deleted_exit`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from orchestrator.containers.backend import ContainerExit, ContainerInfo
from orchestrator.containers.exit_notice import exit_event
from orchestrator.containers.kubernetes_spec import ANNOTATION_PREFIX, CONTAINER_NAME

# Waiting reasons that no wait will cure: the start fails at once with them.
FATAL_WAITING = frozenset(
    {
        "ErrImagePull",
        "ImagePullBackOff",
        "InvalidImageName",
        "ErrImageNeverPull",
        "CreateContainerConfigError",
        "CreateContainerError",
        "RunContainerError",
    }
)
NODE_LOSS_DISRUPTIONS = frozenset({"DeletionByTaintManager", "DeletionByPodGC"})


@dataclass(frozen=True)
class StartProblem:
    """Why a pod is not running (yet): ``fatal`` when waiting longer cannot help."""

    reason: str
    message: str
    fatal: bool

    def __str__(self) -> str:
        return f"{self.reason}: {self.message}" if self.message else self.reason


def _meta(pod: Mapping[str, Any]) -> Mapping[str, Any]:
    return pod.get("metadata") or {}


def _status(pod: Mapping[str, Any]) -> Mapping[str, Any]:
    return pod.get("status") or {}


def pod_name(pod: Mapping[str, Any]) -> str:
    return str(_meta(pod).get("name", ""))


def job_labels(pod: Mapping[str, Any]) -> dict[str, str]:
    """The spec's labels as they were given: the ``ironclaw.*`` annotations (which hold the
    values a label cannot, such as ``created_at``), over the labels."""
    meta = _meta(pod)
    labels = {str(k): str(v) for k, v in (meta.get("labels") or {}).items()}
    for key, value in (meta.get("annotations") or {}).items():
        if str(key).startswith(ANNOTATION_PREFIX):
            labels[str(key)] = str(value)
    return labels


def _container_status(pod: Mapping[str, Any]) -> Mapping[str, Any]:
    for status in _status(pod).get("containerStatuses") or []:
        if status.get("name") == CONTAINER_NAME:
            return dict(status)
    rows = _status(pod).get("containerStatuses") or []
    return dict(rows[0]) if rows else {}


def _condition(pod: Mapping[str, Any], kind: str) -> Mapping[str, Any] | None:
    for condition in _status(pod).get("conditions") or []:
        if condition.get("type") == kind:
            return dict(condition)
    return None


def lost_node(pod: Mapping[str, Any]) -> str | None:
    """The node the pod was lost with, or None while its node is not known to be gone."""
    node = str((pod.get("spec") or {}).get("nodeName") or "") or "unknown"
    if _status(pod).get("reason") == "NodeLost":
        return node
    disruption = _condition(pod, "DisruptionTarget")
    if (
        disruption is not None
        and disruption.get("status") == "True"
        and disruption.get("reason") in NODE_LOSS_DISRUPTIONS
        and terminated(pod) is None
    ):
        return node
    return None


def terminated(pod: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """The job container's ``state.terminated`` (its last run's if it restarted), or None."""
    status = _container_status(pod)
    state = (status.get("state") or {}).get("terminated")
    if state:
        return dict(state)
    last = (status.get("lastState") or {}).get("terminated")
    return dict(last) if last else None


def start_problem(pod: Mapping[str, Any]) -> StartProblem | None:
    """Why the pod is not running: the scheduler's word (``Unschedulable`` and its message,
    which a cluster autoscaler may yet cure) or the kubelet's (``ErrImagePull``: fatal)."""
    scheduled = _condition(pod, "PodScheduled")
    if scheduled is not None and scheduled.get("status") == "False":
        return StartProblem(
            str(scheduled.get("reason") or "Unschedulable"),
            str(scheduled.get("message") or ""),
            fatal=False,
        )
    waiting = (_container_status(pod).get("state") or {}).get("waiting") or {}
    reason = str(waiting.get("reason") or "")
    if reason:
        return StartProblem(reason, str(waiting.get("message") or ""), reason in FATAL_WAITING)
    if _status(pod).get("phase") == "Failed":
        status = _status(pod)
        return StartProblem(
            str(status.get("reason") or "Failed"), str(status.get("message") or ""), True
        )
    return None


@dataclass(frozen=True)
class StartVerdict:
    """Where a starting pod is: ``started`` (running, or already ended: the exit watch reports
    that), ``failed`` with why, or still waiting (``why``: what it waits for)."""

    started: bool = False
    failed: bool = False
    why: str = ""


def start_verdict(pod: Mapping[str, Any]) -> StartVerdict:
    """What a start waiting for ``pod`` does next."""
    info = pod_info(pod)
    problem = start_problem(pod)
    if info.lost_node is not None:
        return StartVerdict(failed=True, why=f"the job's pod lost its node {info.lost_node}")
    if info.exited and terminated(pod) is None:
        # Refused by its node before its container ran (OutOfcpu, NodeAffinity, an eviction):
        # not the exit of a job but a start that failed.
        return StartVerdict(failed=True, why=info.detail or str(problem or "Failed"))
    if info.running or info.exited:
        return StartVerdict(started=True)
    if problem is not None and problem.fatal:
        return StartVerdict(failed=True, why=str(problem))
    return StartVerdict(why=str(problem or "still pending"))


def pod_info(pod: Mapping[str, Any]) -> ContainerInfo:
    """The job's pod as a :class:`ContainerInfo` (its id is the pod's name)."""
    status = _status(pod)
    phase = str(status.get("phase") or "Pending")
    base = ContainerInfo(
        container_id=pod_name(pod),
        name=pod_name(pod),
        labels=job_labels(pod),
        running=False,
        status="created",
    )
    node = lost_node(pod)
    if node is not None:
        return replace(base, status="dead", lost_node=node, detail=_loss_detail(pod))
    ended = terminated(pod)
    if phase in ("Succeeded", "Failed") or ended is not None:
        code = ended.get("exitCode") if ended else None
        exit_code = int(code) if isinstance(code, int) else None
        oom = bool(ended) and ended is not None and ended.get("reason") == "OOMKilled"
        return replace(
            base,
            status="exited",
            exit_code=exit_code,
            oom_killed=oom,
            detail=exit_detail(pod),
        )
    running = (_container_status(pod).get("state") or {}).get("running")
    if phase == "Running" and running:
        started = _timestamp(running.get("startedAt"))
        return replace(base, running=True, status="running", started_at=started)
    return base


def exit_detail(pod: Mapping[str, Any]) -> str:
    """Why the pod ended, in words, when the exit code alone does not say it."""
    status = _status(pod)
    reason = str(status.get("reason") or "")
    message = str(status.get("message") or "")
    node = (pod.get("spec") or {}).get("nodeName")
    where = f" on node {node}" if node else ""
    if reason == "Evicted":
        return f"the pod was evicted by the kubelet{where}: {message}".rstrip(": ")
    if reason == "DeadlineExceeded":
        return "the pod was stopped (its active deadline passed)"
    if reason:
        return f"{reason}{where}: {message}".rstrip(": ")
    ended = terminated(pod) or {}
    if ended.get("reason") not in (None, "", "Completed", "Error", "OOMKilled"):
        return str(ended.get("reason"))
    return ""


def _loss_detail(pod: Mapping[str, Any]) -> str:
    disruption = _condition(pod, "DisruptionTarget") or {}
    return str(disruption.get("message") or _status(pod).get("message") or "")


def deleted_exit(pod: Mapping[str, Any]) -> ContainerExit:
    """A pod of a running job that disappeared (not deleted by this orchestrator): its end
    is unknown, as when its node goes. An ended pod that is deleted ended as it says."""
    info = pod_info(pod)
    if info.exited or info.lost_node is not None:
        return exit_event(info)
    node = str((pod.get("spec") or {}).get("nodeName") or "") or "unknown"
    return exit_event(
        replace(info, status="dead", lost_node=node, detail="its pod was deleted while running")
    )


def _timestamp(raw: object) -> datetime | None:
    if isinstance(raw, datetime):
        return raw
    if not isinstance(raw, str):
        return None
    with contextlib.suppress(ValueError):
        return datetime.fromisoformat(raw.replace("Z", "+00:00"))
    return None
