"""A client's watch survives the orchestrator being restarted mid-job (SIGTERM and kill -9):
it reconnects, resumes after the last sequence it delivered, and delivers every update of the
job exactly once, in order. The orchestrator is a real process, the job a real container."""

from __future__ import annotations

import asyncio
import textwrap
import threading
from typing import Any

import pytest

from ironclaw_client import (
    AsyncClient,
    Client,
    JobUpdate,
    ResultUpdate,
    Snapshot,
    StatusUpdate,
    TerminalReason,
)
from tests.helpers import wait_for

pytestmark = pytest.mark.docker
STEPS = 40

# The job's agent: STEPS status lines, then its result; it rides out the orchestrator's absence
# by trying each call again until it gets through.
AGENT = "python " + textwrap.dedent(
    f"""
    import time
    def send(path, body):
        while True:
            try:
                return call("POST", path, body)
            except Exception:
                time.sleep(0.2)
    for i in range(1, {STEPS + 1}):
        send("/status", {{"message": f"step {{i}}", "iteration": i}})
        time.sleep(0.15)
    send("/complete", {{"success": True, "message": "all steps done"}})
    """
)


def _steps(updates: list[JobUpdate]) -> list[int]:
    return [int(u.message.split()[1]) for u in updates if isinstance(u, StatusUpdate)]


@pytest.mark.parametrize(
    ("how", "sync"), [("sigterm", True), ("kill9", False)], ids=["sigterm-sync", "kill9-async"]
)
async def test_a_watch_survives_a_restart_with_every_update_once_in_order(
    orchestrator_process: Any, test_agent_image: str, how: str, sync: bool
) -> None:
    orch = orchestrator_process(WORKER_IMAGE=test_agent_image)
    await orch.start()
    seen: list[JobUpdate] = []
    lock = threading.Lock()

    async with AsyncClient(orch.target, reconnect_timeout=60) as client:
        job = (await client.create_job(AGENT)).job

        if sync:

            def follow_sync() -> None:
                with Client(orch.target, reconnect_timeout=60) as blocking:
                    for update in blocking.watch(job.job_id):
                        with lock:
                            seen.append(update)

            watcher = asyncio.create_task(asyncio.to_thread(follow_sync))
        else:

            async def follow() -> None:
                async for update in client.watch(job.job_id):
                    seen.append(update)

            watcher = asyncio.create_task(follow())

        def steps_seen() -> int:
            with lock:
                return len(_steps(seen))

        await wait_for(lambda: steps_seen() >= 5, timeout=90, what="the first steps")
        if how == "sigterm":
            assert orch.terminate() == 0
        else:
            orch.kill9()
        before = steps_seen()
        assert before < STEPS  # the job is still going while the orchestrator is away
        await orch.start()
        await asyncio.wait_for(watcher, timeout=120)

        # Everything the job recorded, read back from the orchestrator after the fact.
        history = [u async for u in client.watch(job.job_id, from_start=True)]

    assert isinstance(seen[0], Snapshot)
    sequences = [u.sequence for u in seen]
    assert sequences == list(range(sequences[0], sequences[0] + len(seen)))  # none lost/repeated
    after_snapshot = [u for u in history if u.sequence > seen[0].sequence]
    assert seen[1:] == after_snapshot  # the same updates, the same content
    steps = _steps(seen)
    assert steps == sorted(steps)
    assert steps[-1] == STEPS
    assert before < len(steps)  # updates arrived after the restart too
    assert isinstance(seen[-1], ResultUpdate)
    assert seen[-1].result.reason is TerminalReason.COMPLETED
    assert seen[-1].result.message == "all steps done"
