"""The small contract between the job manager and a container engine.

Docker is the first implementation; nothing here names Docker types, so a Kubernetes backend can
sit behind the same interface (as in jupyterhub's spawner family).
"""

from __future__ import annotations

import abc
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path


@dataclass(frozen=True)
class BindMount:
    host_path: str
    container_path: str
    read_only: bool = False


@dataclass(frozen=True)
class ScratchWorkspace:
    """A job's ``/workspace`` on a backend that binds no host directory: a directory of the
    container's own on the node that runs it, as the image has it at the start (empty), gone
    with the container. The job fetches its tree into it and pushes it back
    (``JobInfo.workspace_sync``)."""

    container_path: str


@dataclass(frozen=True)
class ContainerSpec:
    """Everything needed to create one job container; built by a pure function, easy to test."""

    name: str
    image: str
    command: tuple[str, ...]
    env: Mapping[str, str]
    labels: Mapping[str, str]
    user: str
    working_dir: str
    mounts: tuple[BindMount, ...]
    memory_bytes: int
    memory_swap_bytes: int
    cpu_shares: int
    pids_limit: int
    tmpfs: Mapping[str, str]
    cap_drop: tuple[str, ...]
    cap_add: tuple[str, ...]
    security_opt: tuple[str, ...]
    network: str
    extra_hosts: Mapping[str, str] = field(default_factory=dict)
    runtime: str | None = None
    # Keys of ``env`` whose values are secrets (e.g. the job token): never logged.
    secret_env_keys: frozenset[str] = frozenset()
    # CPU time per second of wall time, in billionths of a CPU (1e9: one CPU); 0: no quota.
    nano_cpus: int = 0
    # The image's filesystem is read-only; the job writes to its mounts and tmpfs only.
    read_only_rootfs: bool = False
    # The container's writable layer, bounded where the engine's storage driver can do it
    # (see ContainerBackend.capabilities); None: unbounded.
    writable_layer_bytes: int | None = None
    # Cluster placement constraints (``node.labels.zone==a``); backends on one host refuse them.
    placement: tuple[str, ...] = ()
    # Replaces the image's entrypoint when set (agent mode runs its runner in any image).
    entrypoint: tuple[str, ...] = ()
    # Set (and ``mounts`` without the project) on a backend that binds no host paths.
    scratch_workspace: ScratchWorkspace | None = None

    def __repr__(self) -> str:
        shown = {k: ("***" if k in self.secret_env_keys else v) for k, v in self.env.items()}
        return f"ContainerSpec(name={self.name!r}, image={self.image!r}, env={shown!r})"


@dataclass(frozen=True)
class EngineCapabilities:
    """What the engine can enforce for a job container; ``None``: the backend cannot tell."""

    cpus: int | None = None  # CPUs a container's quota can span
    cpu_quota: bool | None = None  # a CPU quota (nano_cpus) can be set
    runtimes: frozenset[str] | None = None  # OCI runtimes the engine knows
    storage_driver: str = ""
    # A size limit on a container's writable layer (ContainerSpec.writable_layer_bytes).
    writable_layer_limit: bool = False


@dataclass(frozen=True)
class JobNetworkRequest:
    """An isolated network for one job. Its only peer is a relay that answers as
    ``upstream_host:port`` and forwards that port (and ``extra_ports``: the egress gateway's),
    and nothing else, to the same address on ``upstream_network`` (where the orchestrator's
    worker API is reachable)."""

    instance: str
    job_id: str
    relay_image: str
    upstream_network: str
    upstream_host: str
    port: int
    subnet_pool: str
    extra_ports: tuple[int, ...] = ()
    # The relay's own bounds (containers/relay_script.py): its connections are the job's
    # connections to the worker API.
    relay_max_connections: int = 64
    relay_first_byte_timeout_s: float = 10.0
    relay_idle_timeout_s: float = 900.0
    # The name the relay answers as on the job's network, when it is not ``upstream_host``
    # (on a Swarm the job's URL names the relay, and the relay the worker API's bind address).
    alias: str = ""


@dataclass(frozen=True)
class ContainerInfo:
    """A managed container as the engine reports it."""

    container_id: str
    name: str
    labels: Mapping[str, str]
    running: bool
    exit_code: int | None = None
    oom_killed: bool = False
    started_at: datetime | None = None
    status: str = ""  # the engine's word: created, running, exited, dead, ...
    # The cluster node it ran on went down (its name): the container's end is unknown.
    lost_node: str | None = None
    # The backend's own explanation of how it ended, when the exit code does not say it.
    detail: str = ""

    @property
    def exited(self) -> bool:
        """It ran and stopped (not merely created and not yet started)."""
        return self.status in ("exited", "dead")


@dataclass(frozen=True)
class DirectoryIdentity:
    """Which directory a path names, as the kernel tells them apart: device and inode."""

    device: int
    inode: int

    def __str__(self) -> str:
        return f"device {self.device:#x}, inode {self.inode}"


@dataclass(frozen=True)
class ContainerExit:
    """A managed container stopped running (exited, killed or OOM-killed)."""

    container_id: str
    job_id: str  # "" for a warm-pool slot's container: its job (if any) is in the store
    exit_code: int | None
    oom_killed: bool
    slot_id: str = ""  # the warm-pool slot it was started as, if it was one
    # The cluster node it ran on went down (its name); then exit_code is None.
    lost_node: str | None = None
    # The backend's own explanation of the exit, when it has one (a refused start).
    detail: str = ""


class ContainerBackend(abc.ABC):
    """A container engine seen by the job manager. Async; blocking I/O stays off the loop."""

    # Whether a host directory of the orchestrator can be bind-mounted into a job container.
    # A backend whose containers run on other machines (Swarm, Kubernetes) says no: a job's
    # /workspace is then a ScratchWorkspace, filled from and pushed back to the orchestrator
    # over the worker API.
    binds_host_paths: bool = True

    @abc.abstractmethod
    async def ping(self) -> None:
        """Raises EngineUnavailable when the engine cannot be reached."""

    @abc.abstractmethod
    async def image_exists(self, image: str) -> bool: ...

    @abc.abstractmethod
    async def create_and_start(self, spec: ContainerSpec) -> str:
        """Creates and starts the container; returns its id. Leaves nothing behind on failure."""

    @abc.abstractmethod
    async def stop(self, container_id: str, grace_seconds: int) -> None:
        """SIGTERM, then SIGKILL after the grace period. A missing container is not an error."""

    @abc.abstractmethod
    async def remove(self, container_id: str) -> None:
        """Force-removes the container. A missing container is not an error."""

    @abc.abstractmethod
    async def inspect(self, container_id: str) -> ContainerInfo | None:
        """The container's state, or None if it is gone."""

    @abc.abstractmethod
    async def list_managed(self, instance: str) -> list[ContainerInfo]:
        """Every container labelled with this orchestrator instance, running or not."""

    @abc.abstractmethod
    async def logs_tail(self, container_id: str, lines: int) -> str:
        """The last ``lines`` lines of the container's output ("" if it is gone)."""

    @abc.abstractmethod
    def stream_logs(self, container_id: str, follow: bool, tail_lines: int) -> AsyncIterator[bytes]:
        """The container's output as it comes; ends when the container ends (with follow)."""

    @abc.abstractmethod
    def exits(self, instance: str) -> AsyncIterator[ContainerExit]:
        """Exit notifications for this instance's containers, for as long as it is iterated."""

    async def mounted_directory(
        self, container_id: str, container_path: str
    ) -> DirectoryIdentity | None:
        """The identity of the directory mounted at ``container_path`` in the started
        container, read where the container sees it. None when there is nothing to compare:
        the backend binds no host directories (this default), or the container has already
        stopped. Backends that bind host paths must override it; raises OrchestratorError
        when the container runs but its mount cannot be read."""
        return None

    async def update_memory(self, container_id: str, memory_bytes: int, swap_bytes: int) -> None:
        """Changes a running container's memory limit (a warm slot claimed by a job whose
        limit differs from the pool's). Backends that cannot refuse with FailedPrecondition."""
        from orchestrator.errors import FailedPrecondition

        raise FailedPrecondition(f"{type(self).__name__} cannot change a container's limits")

    async def image_id(self, image: str) -> str | None:
        """The id the image reference names now (None: not present), to tell a warm slot made
        from an image that has since been rebuilt. Backends that cannot tell return None."""
        return None

    async def capabilities(self, probe_image: str | None = None) -> EngineCapabilities:
        """What the engine can enforce; ``probe_image``, when present on the engine, may be
        used to try a limit out (nothing is started). Unknown by default."""
        return EngineCapabilities()

    @abc.abstractmethod
    async def default_gateway(self) -> str | None:
        """The address of the engine's default bridge gateway on the host, if it has one."""

    async def create_job_network(self, request: JobNetworkRequest) -> str:
        """Creates the job's isolated network and its worker-API relay; returns the network's
        name. Idempotent. Backends without isolation refuse (JOB_NETWORK=isolated)."""
        from orchestrator.errors import FailedPrecondition

        raise FailedPrecondition(
            f"{type(self).__name__} does not support JOB_NETWORK=isolated: use JOB_NETWORK=bridge"
        )

    async def remove_job_network(self, instance: str, job_id: str) -> None:
        """Removes the job's relay and network (after its container). Missing is not an error."""
        return None

    async def list_job_networks(self, instance: str) -> list[str]:
        """The job ids of this instance's job networks (to remove orphans)."""
        return []

    def report_errors_to(self, listener: Callable[[str], None]) -> None:  # noqa: B027
        """Calls ``listener`` with a short kind ("unreachable", "api_500") for each failed
        engine call, for the metrics. Backends without such errors ignore it."""

    async def verify_hardening(self) -> None:  # noqa: B027
        """Raises ConfigError where the engine would run job containers without a protection
        their spec asks for and cannot say so per container (Swarm: no-new-privileges comes
        from each node's daemon). Default: the engine applies the spec as it is."""

    async def check_host_paths(self, projects_dir: Path) -> None:  # noqa: B027
        """Raises ConfigError when the engine would not see ``projects_dir`` at that path (the
        orchestrator in a container with the base mounted elsewhere). Default: nothing to
        check, the engine and the orchestrator share a file system view."""

    @abc.abstractmethod
    async def close(self) -> None: ...
