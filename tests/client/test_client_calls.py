"""The client against a real orchestrator (in-process, free ports, the in-memory engine): every
call, typed answers, the exception tree, and a CreateJob retried after a slow start."""

from __future__ import annotations

import asyncio
import uuid

import pytest

from ironclaw_client import (
    AsyncClient,
    Client,
    Event,
    FailedPrecondition,
    InvalidArgument,
    JobLimits,
    JobMode,
    JobState,
    NotFound,
    ResultUpdate,
    Snapshot,
    StateChanged,
    StatusUpdate,
    TerminalReason,
    Timeout,
)
from tests.client.conftest import Running, StartFn
from tests.helpers import wait_for


async def test_create_watch_and_wait_give_typed_updates_and_the_result(fake_orch: Running) -> None:
    async with AsyncClient(fake_orch.target) as client:
        created = await client.create_job("fix the tests", labels={"team": "a"})
        job = created.job
        assert uuid.UUID(job.job_id)  # chosen by the client
        assert not created.already_existed
        assert job.mode is JobMode.WORKER
        assert job.labels == {"team": "a"}

        agent = await fake_orch.agent(job.job_id)
        seen: list[object] = []

        async def follow() -> None:
            async for update in client.watch(job.job_id):
                seen.append(update)

        watcher = asyncio.create_task(follow())
        await wait_for(lambda: seen, what="the snapshot")
        for i in range(1, 4):
            await agent.status(f"step {i}", i)
        await agent.complete("All tests pass.")
        await asyncio.wait_for(watcher, timeout=20)

        assert isinstance(seen[0], Snapshot)
        assert [u.message for u in seen if isinstance(u, StatusUpdate)] == [
            "step 1",
            "step 2",
            "step 3",
        ]
        sequences = [u.sequence for u in seen]  # type: ignore[attr-defined]
        assert sequences == list(range(sequences[0], sequences[0] + len(seen)))
        last = seen[-1]
        assert isinstance(last, ResultUpdate)
        assert last.result.reason is TerminalReason.COMPLETED
        assert last.result.message == "All tests pass."

        result = await client.wait(job.job_id, timeout=10)
        assert result == last.result
        ended = await client.get_job(job.job_id)
        assert ended.state is JobState.STOPPED
        assert ended.is_terminal
        assert ended.result == result

        # A replay of the history carries the same updates (without the snapshot).
        replay = [u async for u in client.watch(job.job_id, from_start=True)]
        assert [u.sequence for u in replay][-len(seen) + 1 :] == sequences[1:]
        assert any(isinstance(u, StateChanged) for u in replay)


async def test_the_sync_client_makes_every_call(fake_orch: Running) -> None:
    # The orchestrator runs on the test's event loop: the blocking client runs in a thread.
    def scenario() -> tuple[list[str], list[str], list[str]]:
        with Client(fake_orch.target) as client:
            ids = [
                client.create_job(f"job {i}", limits=JobLimits(max_iterations=3)).job.job_id
                for i in range(3)
            ]
            listed = [j.job_id for j in client.list_jobs(page_size=1)]
            stopped = client.stop_job(ids[0])
            assert stopped.state is JobState.STOPPED
            assert stopped.result is not None
            assert stopped.result.reason is TerminalReason.STOPPED_BY_OPERATOR
            assert client.wait(ids[0], timeout=5).reason is TerminalReason.STOPPED_BY_OPERATOR
            with pytest.raises(FailedPrecondition) as ended:
                client.send_prompt(ids[0], "more")
            assert "has ended" in ended.value.message
            client.cleanup_job(ids[0])
            running = [j.job_id for j in client.list_jobs(states=[JobState.RUNNING])]
            with pytest.raises(NotFound):
                client.get_job(str(uuid.uuid4()))
            with pytest.raises(InvalidArgument):
                client.get_job("not-a-uuid")
            with pytest.raises(Timeout):
                client.wait(ids[1], timeout=0.5)
            assert client.health() == "SERVING"
            assert list(client.logs(ids[1])) == []
            return ids, listed, running

    ids, listed, running = await asyncio.to_thread(scenario)
    assert listed == ids  # all three pages, oldest first
    assert running == ids[1:]


async def test_an_event_from_the_agent_arrives_typed(fake_orch: Running) -> None:
    async with AsyncClient(fake_orch.target) as client:
        job = (await client.create_job("x")).job
        agent = await fake_orch.agent(job.job_id)
        await agent.post(
            "/event",
            {"event_type": "tool_use", "data": {"tool_name": "shell", "input": {"cmd": "ls"}}},
        )
        await agent.complete("done")
        updates = [u async for u in client.watch(job.job_id, from_start=True)]
        events = [u for u in updates if isinstance(u, Event)]
        assert [(e.event_type, e.data["tool_name"]) for e in events] == [("tool_use", "shell")]
        assert events[0].data["input"] == {"cmd": "ls"}


@pytest.mark.parametrize("sync", [False, True], ids=["async", "sync"])
async def test_create_retried_after_a_slow_start_returns_the_same_job(
    start_fake_orch: StartFn, sync: bool
) -> None:
    running = await start_fake_orch()
    # The engine takes longer to start the container than the client waits for an answer:
    # the first attempt times out while the orchestrator is still creating the job.
    running.backend.start_delay = 1.5
    if sync:

        def create() -> object:
            with Client(running.target) as client:
                return client.create_job("slow", timeout=0.5)

        created = await asyncio.to_thread(create)
    else:
        async with AsyncClient(running.target) as client:
            created = await client.create_job("slow", timeout=0.5)

    job = created.job  # type: ignore[attr-defined]
    assert not created.already_existed  # type: ignore[attr-defined]
    # The first attempt's creation goes on to start the job; the retry made nothing more.
    async with AsyncClient(running.target) as client:

        async def is_running() -> bool:
            return (await client.get_job(job.job_id)).state is JobState.RUNNING

        await wait_for(is_running, timeout=10, what="the job to run")
    assert len(running.backend.created) == 1
    assert len(running.backend.containers) == 1
    jobs = running.orch.manager.list_jobs(page_size=10).jobs
    assert [j.job_id for j in jobs] == [job.job_id]


async def test_a_callers_second_create_with_its_own_id_says_it_already_existed(
    fake_orch: Running,
) -> None:
    job_id = str(uuid.uuid4())
    async with AsyncClient(fake_orch.target) as client:
        first = await client.create_job("mine", job_id=job_id)
        again = await client.create_job("mine", job_id=job_id)
    assert first.job.job_id == again.job.job_id == job_id
    assert not first.already_existed
    assert again.already_existed
    assert len(fake_orch.backend.created) == 1


async def test_node_labels_place_a_job_on_a_swarm_and_are_refused_on_one_host(
    start_fake_orch: StartFn, fake_orch: Running
) -> None:
    swarm = await start_fake_orch(
        CONTAINER_BACKEND="swarm", JOB_NETWORK="bridge", ORCHESTRATOR_HTTP_BIND="127.0.0.1"
    )
    async with AsyncClient(swarm.target) as client:
        created = await client.create_job("t", node_labels={"zone": "a", "gpu": "yes"})
    spec = next(s for s in swarm.backend.created if created.job.job_id in s.name)
    assert spec.placement == ("node.labels.gpu==yes", "node.labels.zone==a")
    async with AsyncClient(fake_orch.target) as client:
        with pytest.raises(FailedPrecondition, match="CONTAINER_BACKEND=swarm"):
            await client.create_job("t", node_labels={"zone": "a"})
