"""The documented custom worker image (deploy/examples/Dockerfile.custom-worker) runs jobs like
the standard one, with its extra tools available to the agent."""

from __future__ import annotations

from typing import Any

import pytest

from ironclaw_client.api.v1 import jobs_pb2 as pb
from tests.e2e.support import create, history, inspect_container, tool_results, wait_terminal

pytestmark = pytest.mark.docker


async def test_job_in_the_custom_image_uses_its_extra_tool(
    e2e: Any, custom_worker_image: str, docker_engine: Any
) -> None:
    run = await e2e("jq_version.yaml", WORKER_IMAGE=custom_worker_image)
    job = await create(run.stub, "Check that jq is installed")
    assert inspect_container(docker_engine, job.job_id)["Config"]["Image"] == custom_worker_image

    final = await wait_terminal(run.stub, job.job_id)

    assert final.state == pb.JOB_STATE_STOPPED, final.result.message
    assert final.result.reason == pb.TERMINAL_REASON_COMPLETED
    [jq] = tool_results(await history(run.stub, job.job_id), "shell")
    assert not jq["is_error"], jq["output"]
    assert jq["output"].startswith("jq-")
