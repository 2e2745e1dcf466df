"""The exit notification of a managed container, as every backend that reads states reports it."""

from __future__ import annotations

from orchestrator.containers.backend import ContainerExit, ContainerInfo
from orchestrator.containers.spec import LABEL_JOB_ID


def exit_event(info: ContainerInfo) -> ContainerExit:
    """The exit notification for an ended or lost container (a service, a pod)."""
    return ContainerExit(
        container_id=info.container_id,
        job_id=info.labels.get(LABEL_JOB_ID, ""),
        exit_code=info.exit_code,
        oom_killed=info.oom_killed,
        lost_node=info.lost_node,
        detail=info.detail,
    )
