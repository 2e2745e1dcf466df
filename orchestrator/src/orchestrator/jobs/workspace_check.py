"""After a job's container has started: is ``/workspace`` the directory that was validated?

The engine is handed the project as a path and resolves it (following symlinks) only when it
starts the container, after the validation. The validated directory is still held open
(``jobs/projects.py``), so its device and inode name it and nothing else; the container's
``/workspace`` must have the same, or the job never runs.
"""

from __future__ import annotations

from orchestrator.containers.backend import ContainerBackend
from orchestrator.containers.spec import WORKSPACE
from orchestrator.errors import FailedPrecondition
from orchestrator.jobs.projects import HeldProjectDir
from orchestrator.logging import get_logger

log = get_logger(__name__)


class WorkspaceMismatch(FailedPrecondition):
    """The directory mounted in the container is not the validated project directory."""


async def verify_mounted_workspace(
    backend: ContainerBackend, container_id: str, project: HeldProjectDir
) -> None:
    """Raises WorkspaceMismatch unless the container's ``/workspace`` is ``project``. A
    backend that binds no host directory, or a container that already stopped, has nothing to
    compare."""
    seen = await backend.mounted_directory(container_id, WORKSPACE)
    if seen is None or seen == project.identity:
        return
    log.warning(
        "the container's workspace is not the validated project directory",
        container_id=container_id,
        mounted=str(seen),
        expected=str(project.identity),
    )
    raise WorkspaceMismatch(
        f"the directory mounted at {WORKSPACE} ({seen}) is not the validated project directory "
        f"{project.requested} ({project.identity}): it was replaced between the check and the "
        "container's start, so the job was not run"
    )
