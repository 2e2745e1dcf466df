"""Builds the hardened container spec of a job: a pure function, tested without an engine."""

from __future__ import annotations

import re
from datetime import datetime

from ironclaw_contract import container_env
from orchestrator.containers.backend import BindMount, ContainerSpec, ScratchWorkspace
from orchestrator.domain.jobs import JobLimits, JobMode
from orchestrator.settings import Settings

LABEL_JOB_ID = "ironclaw.job_id"
LABEL_MODE = "ironclaw.mode"
LABEL_CREATED_AT = "ironclaw.created_at"
LABEL_INSTANCE = "ironclaw.instance"
# A warm-pool slot's container carries this instead of ``ironclaw.job_id`` (labels cannot
# change when a job claims it: the store maps the slot to its job).
LABEL_WARM_SLOT = "ironclaw.warm_slot"
# The command of a slot's container: the image's own entry point, waiting for its claim.
AWAIT_CLAIM_COMMAND = ("--await-claim",)

WORKSPACE = container_env.WORKSPACE_PATH
SANDBOX_USER = "1000:1000"
# The worker image's HOME (the Claude CLI keeps ~/.claude and ~/.claude.json there; pip, npm and
# cargo their caches). With a read-only root it is a tmpfs of its own, which starts empty: the
# image's files under it are not seen by the job.
SANDBOX_HOME = "/home/sandbox"
HOST_GATEWAY_NAME = "host.docker.internal"
# The runner of agent mode (the worker distribution's ``ironclaw-agent-run``): it reads the
# job's catalogue entry from GET /job and runs its command. Every image an agent entry names
# must have it on PATH, as the worker image and the images built on it do.
AGENT_RUNNER = "ironclaw-agent-run"


def container_name(mode: JobMode, job_id: str) -> str:
    return f"ironclaw-{mode.container_prefix}-{job_id}"


def warm_slot_name(mode: JobMode, slot_id: str) -> str:
    return f"ironclaw-{mode.container_prefix}-warm-{slot_id}"


def job_labels(instance: str, job_id: str, mode: JobMode, created_at: datetime) -> dict[str, str]:
    return {
        LABEL_JOB_ID: job_id,
        LABEL_MODE: mode.value,
        LABEL_CREATED_AT: created_at.isoformat(),
        LABEL_INSTANCE: instance,
    }


def build_container_spec(
    *,
    settings: Settings,
    job_id: str,
    mode: JobMode,
    limits: JobLimits,
    created_at: datetime,
    token: str,
    orchestrator_url: str,
    project_dir: str,
    network: str | None = None,
    placement: tuple[str, ...] = (),
    orchestrator_ca_pem: str | None = None,
    agent_image: str | None = None,
    binds_host_paths: bool = True,
) -> ContainerSpec:
    """The container of one job. The job never chooses the image, the working dir or mounts.

    Its environment is its identity and nothing more (``ironclaw_contract.container_env``): how
    to reach the orchestrator and prove which job it is. No command either: the image's
    entrypoint (``ironclaw-worker``, ``ironclaw-claude-bridge``) reads everything else about the
    job (task, limits, deadline, the Claude Code CLI's settings and key) from ``GET /job``, so a
    container started before its job is known can be given one. An agent job runs the image of
    its catalogue entry (``agent_image``) with the agent runner as its entrypoint, whatever
    the image's own, under the same hardening.
    """
    env = {
        container_env.JOB_ID: job_id,
        container_env.ORCHESTRATOR_URL: orchestrator_url,
        container_env.WORKER_TOKEN: token,
        container_env.WORKSPACE: WORKSPACE,
    }
    if orchestrator_ca_pem:
        # Public: the CA that signed the worker API's certificate, for the job to verify it.
        env[container_env.ORCHESTRATOR_CA] = orchestrator_ca_pem
    return _hardened_spec(
        settings=settings,
        name=container_name(mode, job_id),
        mode=mode,
        memory_mb=limits.memory_mb,
        env=env,
        secret_env_keys=frozenset({container_env.WORKER_TOKEN}),
        labels=job_labels(settings.instance, job_id, mode, created_at),
        command=(),
        project_dir=project_dir,
        network=network,
        placement=placement,
        agent_image=agent_image,
        binds_host_paths=binds_host_paths,
    )


def build_warm_slot_spec(
    *,
    settings: Settings,
    slot_id: str,
    mode: JobMode,
    created_at: datetime,
    secret: str,
    orchestrator_url: str,
    project_dir: str,
    network: str | None = None,
    orchestrator_ca_pem: str | None = None,
) -> ContainerSpec:
    """A warm-pool slot: the container of a job not known yet, hardened exactly like one, with
    the mode's default memory limit (a claim with another changes it). Its environment names
    the slot and its claim secret, never a job or a token; its command waits for the claim
    (``ironclaw-worker --await-claim``)."""
    env = {
        container_env.ORCHESTRATOR_URL: orchestrator_url,
        container_env.WORKSPACE: WORKSPACE,
        container_env.WARM_SLOT_ID: slot_id,
        container_env.WARM_SLOT_SECRET: secret,
    }
    if orchestrator_ca_pem:
        env[container_env.ORCHESTRATOR_CA] = orchestrator_ca_pem
    labels = {
        LABEL_WARM_SLOT: slot_id,
        LABEL_MODE: mode.value,
        LABEL_CREATED_AT: created_at.isoformat(),
        LABEL_INSTANCE: settings.instance,
    }
    return _hardened_spec(
        settings=settings,
        name=warm_slot_name(mode, slot_id),
        mode=mode,
        memory_mb=default_memory_mb(settings, mode),
        env=env,
        secret_env_keys=frozenset({container_env.WARM_SLOT_SECRET}),
        labels=labels,
        command=AWAIT_CLAIM_COMMAND,
        project_dir=project_dir,
        network=network,
    )


def default_memory_mb(settings: Settings, mode: JobMode) -> int:
    """A job's memory limit when it asks for none (what a warm slot starts with)."""
    return settings.worker_memory_mb if mode is JobMode.WORKER else settings.claude_memory_mb


def _hardened_spec(
    *,
    settings: Settings,
    name: str,
    mode: JobMode,
    memory_mb: int,
    env: dict[str, str],
    secret_env_keys: frozenset[str],
    labels: dict[str, str],
    command: tuple[str, ...],
    project_dir: str,
    network: str | None,
    placement: tuple[str, ...] = (),
    agent_image: str | None = None,
    binds_host_paths: bool = True,
) -> ContainerSpec:
    if mode is JobMode.AGENT:
        if not agent_image:
            raise ValueError("an agent job's container needs its catalogue entry's image")
        image = agent_image
    else:
        image = settings.worker_image if mode is JobMode.WORKER else settings.claude_image
    memory = memory_mb * 1024 * 1024
    # ``network``: the job's own isolated network (JOB_NETWORK=isolated), where a relay answers
    # as the worker API's host: no host-gateway entry then.
    isolated = network is not None
    network = network or settings.worker_network
    return ContainerSpec(
        name=name,
        image=image,
        command=command,
        env=env,
        labels=labels,
        user=SANDBOX_USER,
        working_dir=WORKSPACE,
        # Where the engine's node is not this host, the project reaches the job through the
        # worker API instead (GET and PUT workspace): nothing of this host is mounted.
        mounts=(
            (BindMount(host_path=project_dir, container_path=WORKSPACE),)
            if binds_host_paths
            else ()
        ),
        scratch_workspace=None if binds_host_paths else ScratchWorkspace(WORKSPACE),
        memory_bytes=memory,
        # Swap equal to the memory limit means no swap: the limit is real and OOM is visible.
        memory_swap_bytes=memory,
        cpu_shares=settings.worker_cpu_shares,
        pids_limit=settings.worker_pids_limit,
        tmpfs=writable_tmpfs(settings),
        cap_drop=("ALL",),
        # CHOWN only: tools such as npm and cargo chown their own files. No DAC_OVERRIDE.
        cap_add=("CHOWN",),
        security_opt=("no-new-privileges:true",),
        network=network,
        extra_hosts=(
            {HOST_GATEWAY_NAME: "host-gateway"} if network == "bridge" and not isolated else {}
        ),
        runtime=settings.worker_runtime,
        secret_env_keys=secret_env_keys,
        # A quota, not only shares: shares divide the CPUs only among jobs that compete, so
        # one job alone could take every core of the host.
        nano_cpus=round(settings.worker_cpus * 1e9),
        read_only_rootfs=settings.worker_read_only_rootfs,
        writable_layer_bytes=settings.worker_disk_bytes,
        placement=placement,
        entrypoint=(AGENT_RUNNER,) if mode is JobMode.AGENT else (),
    )


def writable_tmpfs(settings: Settings) -> dict[str, str]:
    """The size-bounded tmpfs mounts of a job container (their pages also count against its
    memory limit). /tmp keeps the engine's default ``noexec``; $HOME is ``exec``, since
    ``pip install --user``, ``cargo install`` and ``npx`` run what they put there."""
    return {
        "/tmp": f"rw,nosuid,nodev,size={settings.worker_tmp_bytes >> 20}m",  # noqa: S108
        SANDBOX_HOME: (
            f"rw,nosuid,nodev,exec,size={settings.worker_home_bytes >> 20}m,"
            "uid=1000,gid=1000,mode=0700"
        ),
    }


_TMPFS_SIZE = re.compile(r"(?:^|,)size=(\d+)([kmg]?)(?:,|$)")
_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}


def tmpfs_bytes(options: str) -> int | None:
    """The ``size=`` of a tmpfs option string (``rw,size=512m``), in bytes: what a backend
    whose mounts take a number (a service, a pod's emptyDir) asks for."""
    match = _TMPFS_SIZE.search(options.lower())
    if match is None:
        return None
    return int(match.group(1)) * _UNITS[match.group(2)]
