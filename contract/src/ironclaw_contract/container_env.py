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

# The PEM of the CA that signed the worker API's certificate, when the URL is https:// (the
# worker API listens beyond loopback and the Docker bridge). Public, not a secret: every client
# in the container verifies the orchestrator with it (and only with it, for that URL).
ORCHESTRATOR_CA: Final = "IRONCLAW_ORCHESTRATOR_CA"

# A warm-pool slot (a container started before its job exists) holds no job identity: only which
# slot it is and the slot's claim secret, with which it waits on ``GET /warm/{slot}/claim``
# for the job id and token (``ironclaw-worker --await-claim``). The secret opens nothing else
# and dies with the claim.
WARM_SLOT_ID: Final = "IRONCLAW_WARM_SLOT"
WARM_SLOT_SECRET: Final = "IRONCLAW_WARM_SLOT_SECRET"  # noqa: S105 - the variable's name

# Every variable the orchestrator sets; a job container's environment holds these and the
# image's own (PATH, HOME, ...), never a credential or a setting of the job.
ALL: Final = (JOB_ID, ORCHESTRATOR_URL, WORKER_TOKEN, WORKSPACE)
# What a warm slot's container starts with instead: no job id, no token.
WARM_SLOT_ALL: Final = (ORCHESTRATOR_URL, WORKSPACE, WARM_SLOT_ID, WARM_SLOT_SECRET)
# Set besides those only where the worker API speaks TLS.
OPTIONAL: Final = (ORCHESTRATOR_CA,)

# Where the job's project is mounted in its container.
WORKSPACE_PATH: Final = "/workspace"
