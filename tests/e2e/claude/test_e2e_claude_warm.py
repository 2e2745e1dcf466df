"""A Claude Code job claims a warm slot of the Claude image: ``ironclaw-claude-bridge
--await-claim`` waits without a token, then runs the real CLI for the job that claimed it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from ironclaw_client.api.v1 import jobs_pb2 as pb
from tests.e2e.support import create, wait_terminal
from tests.helpers import wait_for

pytestmark = pytest.mark.docker


async def test_a_claude_job_runs_the_cli_in_a_claimed_warm_slot(
    claude: Any, docker_engine: Any, base_dir: Path
) -> None:
    running = await claude(WARM_POOL="claude=1")
    pool = running.orch.manager.warm_pool
    slot = await wait_for(
        lambda: next((s for s in pool._slots.values() if s.ready), None),
        timeout=120,
        what="a ready Claude slot",
    )
    inspected = docker_engine.api.inspect_container(slot.container_id)
    env = dict(item.split("=", 1) for item in inspected["Config"]["Env"])
    assert "IRONCLAW_WORKER_TOKEN" not in env
    assert "ANTHROPIC_API_KEY" not in env
    assert inspected["Config"]["Entrypoint"] == ["ironclaw-claude-bridge"]
    assert inspected["Config"]["Cmd"] == ["--await-claim"]
    running.upstream.enqueue_tool_use(
        "Bash",
        {"command": "echo hi > note.txt", "description": "Write note.txt"},
        text="I'll write note.txt.",
    )
    running.upstream.enqueue_text("Done: note.txt contains hi.")

    job = await create(running.stub, "Create note.txt containing hi", mode=pb.JOB_MODE_CLAUDE_CODE)
    assert job.container_name == slot.container_name
    final = await wait_terminal(running.stub, job.job_id, timeout=120)
    assert final.result.reason == pb.TERMINAL_REASON_COMPLETED, final.result.message
    assert final.result.message == "Done: note.txt contains hi."
    assert (base_dir / "projects" / job.job_id / "note.txt").read_text() == "hi\n"
