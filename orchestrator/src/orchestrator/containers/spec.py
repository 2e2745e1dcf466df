"""Builds the hardened container spec of a job: a pure function, tested without an engine."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime

from orchestrator.containers.backend import BindMount, ContainerSpec
from orchestrator.jobs.models import JobLimits, JobMode
from orchestrator.settings import Settings

LABEL_JOB_ID = "ironclaw.job_id"
LABEL_MODE = "ironclaw.mode"
LABEL_CREATED_AT = "ironclaw.created_at"
LABEL_INSTANCE = "ironclaw.instance"

WORKSPACE = "/workspace"
SANDBOX_USER = "1000:1000"
# The worker image's HOME (the Claude CLI keeps ~/.claude and ~/.claude.json there; pip, npm and
# cargo their caches). With a read-only root it is a tmpfs of its own, which starts empty: the
# image's files under it are not seen by the job.
SANDBOX_HOME = "/home/sandbox"
HOST_GATEWAY_NAME = "host.docker.internal"
# Masked wherever the spec is shown: the job token, or the real credential when opted in.
CLAUDE_SECRET_ENV_KEYS = frozenset({"ANTHROPIC_API_KEY", "CLAUDE_CODE_OAUTH_TOKEN"})
CLI_MODEL_ALIASES = ("sonnet", "opus", "haiku")


def container_name(mode: JobMode, job_id: str) -> str:
    return f"ironclaw-{mode.container_prefix}-{job_id}"


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
    deadline: datetime,
    token: str,
    orchestrator_url: str,
    project_dir: str,
    wait_for_prompts: bool = False,
    network: str | None = None,
) -> ContainerSpec:
    """The container of one job. The job never chooses the image, the working dir or mounts."""
    env: dict[str, str] = {
        "IRONCLAW_WORKER_TOKEN": token,
        "IRONCLAW_JOB_ID": job_id,
        "IRONCLAW_ORCHESTRATOR_URL": orchestrator_url,
        "IRONCLAW_WORKSPACE": WORKSPACE,
        "IRONCLAW_MAX_ITERATIONS": str(limits.max_iterations),
        "IRONCLAW_DEADLINE": deadline.isoformat(),
    }
    secret_keys = {"IRONCLAW_WORKER_TOKEN"}
    if mode is JobMode.WORKER:
        image = settings.worker_image
        command: tuple[str, ...] = ()  # the image's entrypoint: ironclaw-worker
    else:
        image = settings.claude_image
        command = (
            "--job-id",
            job_id,
            "--orchestrator-url",
            orchestrator_url,
            "--max-turns",
            str(limits.claude_max_turns),
            "--model",
            limits.claude_model,
        )
        if wait_for_prompts:
            command += ("--wait-for-prompts",)
        env.update(_claude_env(settings, job_id, token, orchestrator_url, limits))
        secret_keys.update(CLAUDE_SECRET_ENV_KEYS)
    memory = limits.memory_mb * 1024 * 1024
    # ``network``: the job's own isolated network (JOB_NETWORK=isolated), where a relay answers
    # as the worker API's host: no host-gateway entry then.
    isolated = network is not None
    network = network or settings.worker_network
    return ContainerSpec(
        name=container_name(mode, job_id),
        image=image,
        command=command,
        env=env,
        labels=job_labels(settings.instance, job_id, mode, created_at),
        user=SANDBOX_USER,
        working_dir=WORKSPACE,
        mounts=(BindMount(host_path=project_dir, container_path=WORKSPACE),),
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
        secret_env_keys=frozenset(secret_keys),
        # A quota, not only shares: shares divide the CPUs only among jobs that compete, so
        # one job alone could take every core of the host.
        nano_cpus=round(settings.worker_cpus * 1e9),
        read_only_rootfs=settings.worker_read_only_rootfs,
        writable_layer_bytes=settings.worker_disk_bytes,
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


def _claude_env(
    settings: Settings, job_id: str, token: str, orchestrator_url: str, limits: JobLimits
) -> Mapping[str, str]:
    env = {
        "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
        "CLAUDE_CODE_MODEL": limits.claude_model,
        "CLAUDE_CODE_MAX_TURNS": str(limits.claude_max_turns),
        "CLAUDE_CODE_ALLOWED_TOOLS": ",".join(settings.claude_allowed_tools),
    }
    # The CLI resolves --model sonnet|opus|haiku itself; these make it send the ids the
    # orchestrator's model map (and so its allowlist) names.
    for alias, model in settings.claude_model_map:
        if alias in CLI_MODEL_ALIASES:
            env[f"ANTHROPIC_DEFAULT_{alias.upper()}_MODEL"] = model
    if settings.claude_key_in_container:
        # Opt-in (CLAUDE_CODE_KEY_IN_CONTAINER=1), and weaker: the CLI calls Anthropic directly
        # with the real credential, so anything the agent runs can read and exfiltrate it, and
        # the orchestrator sees none of the calls: no per-job metering, budget or model
        # allowlist. For sites whose containers must not route through the orchestrator.
        if settings.anthropic_api_key:
            env["ANTHROPIC_API_KEY"] = settings.anthropic_api_key.reveal()
        elif settings.claude_oauth_token:
            env["CLAUDE_CODE_OAUTH_TOKEN"] = settings.claude_oauth_token.reveal()
        if settings.anthropic_base_url:
            env["ANTHROPIC_BASE_URL"] = settings.anthropic_base_url
        return env
    # The default: the container talks Anthropic Messages to the orchestrator's per-job route and
    # presents its job token as the API key; the real credential never enters the container.
    env["ANTHROPIC_BASE_URL"] = f"{orchestrator_url}/worker/{job_id}/anthropic"
    env["ANTHROPIC_API_KEY"] = token
    return env
