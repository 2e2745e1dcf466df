"""When the orchestrator itself runs in a container: check that the projects base is the same
path on the host.

The engine resolves a job container's bind-mount source on the host, not in the orchestrator's
container, so ``<IRONCLAW_BASE_DIR>/projects`` must be mounted from the host at the very path
it has there (``-v /srv/ironclaw:/srv/ironclaw``). Anything else would mount the wrong
directory, or an empty one, into every job: refused at startup.
"""

from __future__ import annotations

import asyncio
import os
import socket
from pathlib import Path, PurePosixPath
from typing import Any

from orchestrator.errors import ConfigError
from orchestrator.logging import get_logger

log = get_logger(__name__)


def in_container() -> bool:
    return Path("/.dockerenv").exists()


def check_mapping(projects_dir: Path, mounts: list[dict[str, Any]]) -> None:
    """Raises ConfigError unless a bind mount covers ``projects_dir`` at its host path."""
    target = PurePosixPath(projects_dir)
    best: dict[str, Any] | None = None
    for mount in mounts:
        dest = PurePosixPath(str(mount.get("Destination", "")))
        if (target == dest or dest in target.parents) and (
            best is None or len(dest.parts) > len(PurePosixPath(best["Destination"]).parts)
        ):
            best = mount
    base = projects_dir.parent
    if best is None or best.get("Type") != "bind":
        raise ConfigError(
            f"IRONCLAW_BASE_DIR={base}: its projects directory {projects_dir} is not bind-mounted "
            "from the host. Job containers' mounts are resolved on the host: mount the host "
            f"directory at the same path (e.g. -v {base}:{base}) and set IRONCLAW_BASE_DIR to it"
        )
    if str(best["Source"]).rstrip("/") != str(best["Destination"]).rstrip("/"):
        raise ConfigError(
            f"IRONCLAW_BASE_DIR={base}: {best['Destination']} is mounted from the host path "
            f"{best['Source']}. Job containers' mounts are resolved on the host: mount it at the "
            f"same path ({best['Source']}:{best['Source']}) and set IRONCLAW_BASE_DIR to that path"
        )


async def verify_projects_dir_on_host(projects_dir: Path) -> None:
    """In a container, checks the projects base against the host (see the module docstring).
    Skipped, with a warning, when the orchestrator cannot inspect its own container."""
    if not in_container():
        return

    def own_mounts() -> list[dict[str, Any]] | None:
        import docker

        client = docker.from_env(timeout=10)
        try:
            info = client.api.inspect_container(os.environ.get("HOSTNAME") or socket.gethostname())
        except docker.errors.NotFound:
            return None
        finally:
            client.close()
        return list(info.get("Mounts") or [])

    try:
        mounts = await asyncio.to_thread(own_mounts)
    except Exception as exc:
        log.warning("cannot check IRONCLAW_BASE_DIR against the host", error=str(exc))
        return
    if mounts is None:
        log.warning("cannot find the orchestrator's own container to check IRONCLAW_BASE_DIR")
        return
    check_mapping(projects_dir, mounts)
