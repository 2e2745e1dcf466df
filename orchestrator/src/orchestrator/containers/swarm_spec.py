"""The Swarm service of one job, built from its :class:`ContainerSpec`: a pure function, tested
without an engine.

One service per job: one replica, never restarted (a job that ends must not start again), the
job's labels on the service and on its task's container. What a service cannot express is
refused or named here, so nothing is silently weaker than on one host:

* ``no-new-privileges`` cannot be asked for by a service (API 1.41): it comes from each node's
  daemon setting. The task runs behind :data:`NO_NEW_PRIVS_GUARD`, which refuses to start the
  agent unless its process has ``NoNewPrivs: 1`` (exit :data:`NO_NEW_PRIVS_EXIT_CODE`).
* Swap cannot be bounded and CPU shares cannot be set on a service; the memory limit and the CPU
  quota are.
* A service's tmpfs is always ``noexec`` and owned by root: ``$HOME`` gets mode 1777 so that uid
  1000 can write it, and what a job puts there cannot be run from there.
* ``/workspace`` (``ContainerSpec.scratch_workspace``: no host path is bound on a cluster) is an
  anonymous volume of the node's ``local`` driver. Measured on Docker 20.10: a task's anonymous
  volume is removed with its container when the service is removed; a named one stays on the
  node, and so does one with driver options (a tmpfs-backed volume: the node's executor creates
  a volume of its own from the options next to the container's, and only the latter goes).
  A service tmpfs is ``noexec`` (a workspace must run what it builds). The volume starts as
  the image's ``/workspace`` (empty, owned by uid 1000 in the job images) and, like the
  writable layer, is bounded by the node's disk only.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from orchestrator.containers.backend import ContainerSpec
from orchestrator.containers.spec import tmpfs_bytes
from orchestrator.errors import FailedPrecondition

NO_NEW_PRIVS_EXIT_CODE = 97
# Run as ``sh -c GUARD ironclaw-guard <entrypoint> <cmd>``: the agent then replaces the shell
# (``exec``), so it is PID 1 as with the Docker backend and nothing else holds the token.
NO_NEW_PRIVS_GUARD = (
    "grep -q '^NoNewPrivs:[[:space:]]*1' /proc/self/status || { "
    "echo 'ironclaw: no-new-privileges is off for this job container: set "
    '"no-new-privileges": true in the daemon.json of the dockerd on this node and restart it, '
    "or accept it with SWARM_ALLOW_NEW_PRIVILEGES=1' >&2; "
    f'exit {NO_NEW_PRIVS_EXIT_CODE}; }}; exec "$@"'
)
GUARD_ARGV0 = "ironclaw-guard"


@dataclass(frozen=True)
class SwarmPlacement:
    """Where a job's task may run: constraints (``node.labels.zone==a``) and reservations."""

    constraints: tuple[str, ...] = ()
    reserve_nano_cpus: int = 0
    reserve_memory_bytes: int = 0


@dataclass(frozen=True)
class ServiceDefinition:
    """The arguments of one ``POST /services/create``."""

    name: str
    labels: dict[str, str]
    task_template: dict[str, Any]
    mode: dict[str, Any] = field(default_factory=lambda: {"Replicated": {"Replicas": 1}})
    # ``{"Mode": "dnsrr"}`` on an overlay: the default virtual IP needs IPVS on every node.
    endpoint_spec: dict[str, Any] | None = None


def node_label_constraints(node_labels: Mapping[str, str]) -> tuple[str, ...]:
    """A job's ``placement.node_labels`` as Swarm constraints, in a stable order."""
    return tuple(f"node.labels.{key}=={value}" for key, value in sorted(node_labels.items()))


def build_service(
    spec: ContainerSpec,
    *,
    placement: SwarmPlacement,
    image_entrypoint: Sequence[str],
    image_cmd: Sequence[str],
    guard_no_new_privileges: bool,
    stop_grace_s: int,
) -> ServiceDefinition:
    """The service running ``spec``. As on one host, ``spec.command`` replaces the image's
    command, never its entrypoint; the guard runs before both. ``placement`` adds to
    ``spec.placement``."""
    if spec.runtime:
        raise FailedPrecondition(
            f"WORKER_RUNTIME={spec.runtime}: a Swarm service cannot choose an OCI runtime; set "
            "it as the default runtime of each node's dockerd and unset WORKER_RUNTIME"
        )
    argv = [*image_entrypoint, *(spec.command or image_cmd)]
    container: dict[str, Any] = {
        "Image": spec.image,
        "Env": [f"{key}={value}" for key, value in spec.env.items()],
        "Labels": dict(spec.labels),
        "User": spec.user,
        "Dir": spec.working_dir,
        "ReadOnly": spec.read_only_rootfs,
        "CapabilityDrop": [_cap(name) for name in spec.cap_drop],
        "CapabilityAdd": [_cap(name) for name in spec.cap_add],
        # No docker-init, as on one host: PID 1 would hold the token in /proc/1/environ.
        "Init": False,
        "StopGracePeriod": stop_grace_s * 1_000_000_000,
        "Mounts": _mounts(spec),
    }
    if guard_no_new_privileges:
        if not argv:
            raise FailedPrecondition(
                f"image {spec.image} has neither an entrypoint nor a command to run"
            )
        container["Command"] = ["/bin/sh", "-c", NO_NEW_PRIVS_GUARD, GUARD_ARGV0]
        container["Args"] = argv
    elif spec.command:
        container["Args"] = list(spec.command)
    if spec.extra_hosts:
        # Swarm has no "host-gateway": only literal addresses can be passed on.
        container["Hosts"] = [
            f"{address} {name}"
            for name, address in spec.extra_hosts.items()
            if address != "host-gateway"
        ]
    limits: dict[str, Any] = {"MemoryBytes": spec.memory_bytes, "Pids": spec.pids_limit}
    if spec.nano_cpus:
        limits["NanoCPUs"] = spec.nano_cpus
    reservations: dict[str, Any] = {}
    if placement.reserve_nano_cpus:
        reservations["NanoCPUs"] = placement.reserve_nano_cpus
    if placement.reserve_memory_bytes:
        reservations["MemoryBytes"] = placement.reserve_memory_bytes
    constraints = list(dict.fromkeys((*placement.constraints, *spec.placement)))
    task_template: dict[str, Any] = {
        "ContainerSpec": container,
        "Resources": {"Limits": limits, "Reservations": reservations},
        # A job runs once: an exit, a kill or a lost node ends it, never a second start.
        "RestartPolicy": {"Condition": "none", "MaxAttempts": 0},
        "Placement": {"Constraints": constraints},
    }
    endpoint_spec: dict[str, Any] | None = None
    if spec.network and spec.network != "bridge":
        task_template["Networks"] = [{"Target": spec.network}]
        endpoint_spec = {"Mode": "dnsrr"}
    return ServiceDefinition(
        name=spec.name,
        labels=dict(spec.labels),
        task_template=task_template,
        endpoint_spec=endpoint_spec,
    )


def _cap(name: str) -> str:
    return name if name == "ALL" or name.startswith("CAP_") else f"CAP_{name}"


def _mounts(spec: ContainerSpec) -> list[dict[str, Any]]:
    mounts: list[dict[str, Any]] = [
        {
            "Type": "bind",
            "Source": mount.host_path,
            "Target": mount.container_path,
            "ReadOnly": mount.read_only,
        }
        for mount in spec.mounts
    ]
    for target, options in spec.tmpfs.items():
        tmpfs: dict[str, Any] = {"Mode": 0o1777}
        size = tmpfs_bytes(options)
        if size:
            tmpfs["SizeBytes"] = size
        mounts.append({"Type": "tmpfs", "Target": target, "TmpfsOptions": tmpfs})
    scratch = spec.scratch_workspace
    if scratch is not None:
        # No Source, no DriverConfig: the only kind of volume the node removes with the task.
        mounts.append(
            {
                "Type": "volume",
                "Target": scratch.container_path,
                "VolumeOptions": {"NoCopy": False},
            }
        )
    return mounts
