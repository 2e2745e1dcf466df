"""Settings checked against what the engine can do, once at start.

A setting the engine refuses on every create (more CPUs than it has, a CPU quota without CFS)
would fail every job; it stops the start instead, naming the variable. What only weakens a
limit, or may still change (a runtime installed later), is a warning.
"""

from __future__ import annotations

from dataclasses import dataclass

from orchestrator.containers.backend import EngineCapabilities
from orchestrator.settings import Settings


@dataclass(frozen=True)
class EngineCheck:
    """The outcome: ``errors`` stop the start, ``warnings`` are logged."""

    errors: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()


def check_engine_capabilities(settings: Settings, caps: EngineCapabilities) -> EngineCheck:
    """What is wrong with ``settings`` on an engine that can do ``caps``."""
    errors: list[str] = []
    warnings: list[str] = []
    cpus = settings.worker_cpus
    if cpus > 0 and caps.cpu_quota is False:
        errors.append(
            f"WORKER_CPUS={cpus:g}: this Docker engine cannot set a CPU quota (no CFS bandwidth "
            "control in its cgroups); set WORKER_CPUS=0 to run jobs on CPU shares only"
        )
    elif cpus > 0 and caps.cpus is not None and cpus > caps.cpus:
        errors.append(
            f"WORKER_CPUS={cpus:g} is more than the {caps.cpus} CPU(s) this Docker engine has, "
            "so it would refuse every job container: give at most that many"
        )
    runtime = settings.worker_runtime
    if runtime and caps.runtimes is not None and runtime not in caps.runtimes:
        warnings.append(
            f"WORKER_RUNTIME={runtime} is not a runtime this Docker engine knows "
            f"({', '.join(sorted(caps.runtimes))}): every job will fail to start until it is "
            "registered with the engine"
        )
    if not settings.worker_read_only_rootfs and not caps.writable_layer_limit:
        warnings.append(
            f"WORKER_READ_ONLY_ROOTFS=0 and the storage driver {caps.storage_driver or '?'} "
            "cannot limit a container's writable layer (WORKER_DISK_MB is not enforced): a job "
            "can fill the engine's disk. Keep the root read-only, or use overlay2 on xfs "
            "mounted with pquota"
        )
    return EngineCheck(tuple(errors), tuple(warnings))
