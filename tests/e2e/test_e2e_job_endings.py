"""How real worker jobs end when they do not finish on their own: the iteration limit, the
deadline, a container killed under them, a tool signalling the worker, and an operator's stop."""

from __future__ import annotations

import time
from typing import Any

import pytest

from ironclaw_client.api.v1 import jobs_pb2 as pb
from tests.e2e.support import (
    container_env,
    containers,
    create,
    get,
    history,
    tool_events,
    tool_results,
    wait_for_event,
    wait_removed,
    wait_terminal,
    worker_api_get_job_status,
)

pytestmark = pytest.mark.docker


async def test_max_iterations_reached_fails_the_job(e2e: Any, docker_engine: Any) -> None:
    run = await e2e("keep_calling_tools.yaml")
    job = await create(run.stub, "Check forever", limits=pb.JobLimits(max_iterations=2))
    assert job.limits.max_iterations == 2

    final = await wait_terminal(run.stub, job.job_id)

    assert final.state == pb.JOB_STATE_FAILED
    assert final.result.reason == pb.TERMINAL_REASON_FAILED
    assert not final.result.success
    assert "max iterations (2) reached" in final.result.message
    assert final.result.iterations == 2
    assert final.usage.calls == 2
    assert final.result.details["reason"] == "max_iterations"
    updates = await history(run.stub, job.job_id)
    assert tool_events(updates) == [("tool_use", "shell"), ("tool_result", "shell")] * 2
    await wait_removed(docker_engine, job.job_id)


async def test_job_past_its_deadline_is_failed_as_timed_out(e2e: Any, docker_engine: Any) -> None:
    run = await e2e("sleep_long.yaml")
    # Whatever the job is doing when the deadline passes (on a loaded machine it may still be
    # starting), it ends TIMED_OUT.
    job = await create(run.stub, "Wait for the build", limits=pb.JobLimits(timeout_seconds=2))

    final = await wait_terminal(run.stub, job.job_id, timeout=30)

    assert final.state == pb.JOB_STATE_FAILED
    assert final.result.reason == pb.TERMINAL_REASON_TIMED_OUT
    assert final.result.message == "timed out after 2 s"
    await wait_removed(docker_engine, job.job_id)


async def test_container_killed_mid_run_fails_the_job_as_exited(
    e2e: Any, docker_engine: Any
) -> None:
    run = await e2e("sleep_long.yaml")
    job = await create(run.stub, "Wait for the build")
    token = container_env(docker_engine, job.job_id)["IRONCLAW_WORKER_TOKEN"]
    await wait_for_event(run.stub, job.job_id, "tool_use", "shell")

    containers(docker_engine, job.job_id)[0].kill()
    final = await wait_terminal(run.stub, job.job_id, timeout=30)

    assert final.state == pb.JOB_STATE_FAILED
    assert final.result.reason == pb.TERMINAL_REASON_EXITED
    assert final.result.exit_code == 137  # SIGKILL
    assert "code 137 without reporting a result" in final.result.message
    await wait_removed(docker_engine, job.job_id)
    # The dead container's log is kept with the job.
    assert "worker for job" in (await get(run.stub, job.job_id)).log_tail
    status, _ = await worker_api_get_job_status(run.orch, job.job_id, token)
    assert status == 401
    updates = await history(run.stub, job.job_id)
    assert updates[-1].result.reason == pb.TERMINAL_REASON_EXITED


async def test_sigkill_from_a_tool_cannot_kill_the_worker(e2e: Any) -> None:
    # The worker is PID 1 of its container: the kernel drops SIGKILL sent to it from inside.
    run = await e2e("kill_pid1.yaml")
    job = await create(run.stub, "Kill your own process")

    final = await wait_terminal(run.stub, job.job_id)

    assert final.state == pb.JOB_STATE_STOPPED, final.result.message
    assert final.result.reason == pb.TERMINAL_REASON_COMPLETED
    assert final.result.message == "I am still here."
    [result] = tool_results(await history(run.stub, job.job_id), "shell")
    assert result["output"].startswith("sent")


async def test_worker_terminated_by_its_own_tool_fails_the_job_as_exited(
    e2e: Any, docker_engine: Any
) -> None:
    run = await e2e("term_pid1.yaml")
    job = await create(run.stub, "Terminate your own process")

    final = await wait_terminal(run.stub, job.job_id)

    assert final.state == pb.JOB_STATE_FAILED
    assert final.result.reason == pb.TERMINAL_REASON_EXITED
    assert final.result.exit_code == 143  # what the worker exits with on SIGTERM
    assert final.usage.calls == 1
    # The worker died inside the tool call: it never reported the tool's result.
    assert tool_events(await history(run.stub, job.job_id)) == [("tool_use", "shell")]
    await wait_removed(docker_engine, job.job_id)
    assert "stopped by SIGTERM" in (await get(run.stub, job.job_id)).log_tail


async def test_stop_mid_run_ends_the_job_within_the_grace_period(
    e2e: Any, docker_engine: Any
) -> None:
    grace = 10
    run = await e2e("sleep_long.yaml", STOP_GRACE_S=str(grace))
    job = await create(run.stub, "Wait for the build")
    token = container_env(docker_engine, job.job_id)["IRONCLAW_WORKER_TOKEN"]
    await wait_for_event(run.stub, job.job_id, "tool_use", "shell")

    started = time.monotonic()
    stopped = (await run.stub.StopJob(pb.StopJobRequest(job_id=job.job_id), timeout=60)).job
    elapsed = time.monotonic() - started

    assert stopped.state == pb.JOB_STATE_STOPPED
    assert stopped.result.reason == pb.TERMINAL_REASON_STOPPED_BY_OPERATOR
    # The worker ends on SIGTERM (killing its command) instead of waiting out the grace period.
    assert elapsed < grace, f"StopJob took {elapsed:.1f} s"
    assert "stopped by SIGTERM" in stopped.log_tail
    assert containers(docker_engine, job.job_id) == []
    status, _ = await worker_api_get_job_status(run.orch, job.job_id, token)
    assert status == 401
    final = await wait_terminal(run.stub, job.job_id)
    assert final.result.reason == pb.TERMINAL_REASON_STOPPED_BY_OPERATOR
