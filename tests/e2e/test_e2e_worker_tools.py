"""The worker's tools inside the real container: follow-up prompts reach the model, paths stay in
the workspace, credentials reach the tools and the worker's own token does not."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import pytest

from ironclaw_client.api.v1 import jobs_pb2 as pb
from tests.e2e.support import (
    SCRIPTS,
    RecordingScriptedProvider,
    container_env,
    create,
    get,
    history,
    tool_results,
    wait_for_event,
    wait_removed,
    wait_terminal,
)

pytestmark = pytest.mark.docker

FOLLOW_UP = "Also note the build time in NOTES.md."
GITHUB_VALUE = "ghp_e2eNotARealToken0123456789abcdefXYZ"


async def test_follow_up_prompt_sent_mid_run_reaches_the_model(e2e: Any) -> None:
    provider = RecordingScriptedProvider(SCRIPTS / "follow_up.yaml")
    run = await e2e("follow_up.yaml", provider=provider)
    job = await create(run.stub, "Run the slow part")
    await wait_for_event(run.stub, job.job_id, "tool_use", "shell")  # `sleep 3` is running

    await run.stub.SendPrompt(pb.SendPromptRequest(job_id=job.job_id, content=FOLLOW_UP))
    final = await wait_terminal(run.stub, job.job_id)

    assert final.state == pb.JOB_STATE_STOPPED, final.result.message
    assert final.result.message == "Done, and I read your follow-up."
    first, second = provider.requests
    assert [m.content for m in first.messages if m.role == "user"] == ["Run the slow part"]
    roles = [m.role for m in second.messages]
    assert roles == ["system", "user", "assistant", "tool", "user"]
    assert "slow part done" in (second.messages[3].content or "")
    assert second.messages[4].content == FOLLOW_UP


async def test_tool_paths_outside_the_workspace_are_refused(
    e2e: Any, sandbox_project: Any, base_dir: Path
) -> None:
    run = await e2e("path_escapes.yaml")
    project = sandbox_project("confined")
    job = await create(run.stub, "Read the system files", project_dir=str(project))

    final = await wait_terminal(run.stub, job.job_id)

    assert final.state == pb.JOB_STATE_STOPPED, final.result.message
    assert final.result.reason == pb.TERMINAL_REASON_COMPLETED
    results = tool_results(await history(run.stub, job.job_id))
    by_call = [(r["tool_name"], r["is_error"]) for r in results]
    assert by_call == [
        ("read_file", True),  # /etc/passwd
        ("read_file", True),  # ../../etc/hostname
        ("write_file", True),  # ../escaped.txt
        ("shell", False),  # ln -s / /workspace/root
        ("read_file", True),  # root/etc/hostname
        ("list_dir", True),  # root/etc
        ("write_file", True),  # root/tmp/escaped.txt
    ]
    for result in results:
        if result["is_error"]:
            assert "is outside the workspace /workspace" in result["output"]
    assert "root:x:0:0" not in "".join(r["output"] for r in results)
    assert (project / "root").is_symlink()  # the link itself is inside, and allowed
    assert not (base_dir / "projects" / "escaped.txt").exists()


async def test_granted_credentials_reach_the_shell_and_the_worker_token_does_not(
    e2e: Any, docker_engine: Any
) -> None:
    run = await e2e("credentials.yaml")
    job = await create(
        run.stub,
        "Show your environment",
        credentials=[
            pb.CredentialGrant(name="github", credential_type="api_token", value=GITHUB_VALUE)
        ],
    )
    token = container_env(docker_engine, job.job_id)["IRONCLAW_WORKER_TOKEN"]
    assert token.startswith("irc_")

    final = await wait_terminal(run.stub, job.job_id)

    assert final.state == pb.JOB_STATE_STOPPED, final.result.message
    assert list(final.credential_names) == ["github"]
    updates = await history(run.stub, job.job_id)
    env, digest, pid1, environ = tool_results(updates, "shell")
    assert not env["is_error"]
    assert "GITHUB_TOKEN=***" in env["output"].splitlines()  # present, and masked in the output
    assert "IRONCLAW_" not in env["output"]
    expected = hashlib.sha256(GITHUB_VALUE.encode()).hexdigest()
    assert digest["output"].startswith(expected)  # the tool saw the real value
    # The worker is PID 1 and non-dumpable: its initial environment (token included) is unreadable.
    assert "ironclaw-worker" in pid1["output"]
    assert environ["is_error"]
    assert "Permission denied" in environ["output"]
    everything = str(updates)
    assert token not in everything
    assert GITHUB_VALUE not in everything
    await wait_removed(docker_engine, job.job_id)
    log_tail = (await get(run.stub, job.job_id)).log_tail
    assert "credentials: GITHUB_TOKEN" in log_tail
    assert token not in log_tail
    assert GITHUB_VALUE not in log_tail
