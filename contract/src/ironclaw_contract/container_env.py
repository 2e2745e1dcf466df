"""The environment a job container starts with: how to find the orchestrator and prove who it
is, nothing more. Everything else about the job (task, limits, deadline, model, tools,
credential names) comes from ``GET /worker/{job_id}/job``, the one channel of job
configuration, so a container started before its job exists can be given one later."""

from __future__ import annotations

from typing import Final

JOB_ID: Final = "IRONCLAW_JOB_ID"
ORCHESTRATOR_URL: Final = "IRONCLAW_ORCHESTRATOR_URL"
WORKER_TOKEN: Final = "IRONCLAW_WORKER_TOKEN"  # noqa: S105 - the variable's name
WORKSPACE: Final = "IRONCLAW_WORKSPACE"

# Every variable the orchestrator sets; a job container's environment holds these and the
# image's own (PATH, HOME, ...), never a credential or a setting of the job.
ALL: Final = (JOB_ID, ORCHESTRATOR_URL, WORKER_TOKEN, WORKSPACE)

# Where the job's project is mounted in its container.
WORKSPACE_PATH: Final = "/workspace"
