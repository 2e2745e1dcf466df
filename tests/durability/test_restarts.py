"""Nothing is lost when the orchestrator, a container or the engine fails: real processes are
killed, real containers die, and the jobs end the way they should."""

from __future__ import annotations

import asyncio
import os
import uuid
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from ironclaw_client.api.v1 import jobs_pb2 as pb
from ironclaw_contract.job_keys import llm_key_for
from tests.durability.conftest import job_stub
from tests.fakes.fake_anthropic import FakeAnthropic
from tests.helpers import wait_for

pytestmark = pytest.mark.docker
SCRIPTS = Path(__file__).parent / "scripts"
TERMINAL = (pb.JOB_STATE_STOPPED, pb.JOB_STATE_FAILED)
UPSTREAM_KEY = "sk-ant-durable-" + "u" * 24


async def _get(stub: Any, job_id: str) -> Any:
    return (await stub.GetJob(pb.GetJobRequest(job_id=job_id))).job


async def _terminal(stub: Any, job_id: str) -> Any:
    job = await _get(stub, job_id)
    return job if job.state in TERMINAL else None


def _containers(docker_engine: Any, **labels: str) -> list[dict[str, Any]]:
    filters = [f"{k.replace('_', '.', 1)}={v}" for k, v in labels.items()]
    return list(docker_engine.api.containers(all=True, filters={"label": filters}))


async def test_kill_9_while_three_jobs_run_then_all_finish_with_their_history(
    orchestrator_process: Any, worker_image: str, docker_engine: Any
) -> None:
    orch = orchestrator_process(
        WORKER_IMAGE=worker_image,
        LLM_PROVIDER="scripted",
        LLM_SCRIPT=str(SCRIPTS / "sleep-then-finish.yaml"),
    )
    await orch.start()
    async with job_stub(orch.target) as stub:
        ids = [
            (await stub.CreateJob(pb.CreateJobRequest(task=f"job {i}"))).job.job_id
            for i in range(3)
        ]

        async def all_in_tool() -> bool:
            jobs = [await _get(stub, job_id) for job_id in ids]
            return all(j.iteration >= 1 for j in jobs)

        await wait_for(all_in_tool, timeout=60, what="every job to be in its tool call")
        before = {job_id: (await _get(stub, job_id)).last_sequence for job_id in ids}
    orch.kill9()
    # The containers outlive the orchestrator.
    assert len(_containers(docker_engine, ironclaw_instance=orch.env["ORCHESTRATOR_INSTANCE"])) == 3
    await orch.start()
    async with job_stub(orch.target) as stub:
        for job_id in ids:
            final = await wait_for(lambda j=job_id: _terminal(stub, j), timeout=90, what=job_id)
            assert final.state == pb.JOB_STATE_STOPPED, final.result.message
            assert final.result.reason == pb.TERMINAL_REASON_COMPLETED
            assert final.result.message == "Finished after the restart."
            assert final.usage.calls == 2
            history = [
                u async for u in stub.WatchJob(pb.WatchJobRequest(job_id=job_id, from_start=True))
            ]
            sequences = [u.sequence for u in history]
            assert sequences == sorted(sequences)
            assert sequences[0] == 1
            assert max(sequences) > before[job_id]
            tools = [
                u.event.data["tool_name"]
                for u in history
                if u.WhichOneof("update") == "event" and u.event.event_type == "tool_use"
            ]
            assert tools == ["shell"]
            kinds = [u.WhichOneof("update") for u in history]
            assert kinds.count("result") == 1


async def test_container_of_an_unknown_job_is_removed_at_start(
    orchestrator_process: Any, test_agent_image: str, docker_engine: Any, test_instance: str
) -> None:
    stray = docker_engine.api.create_container(
        test_agent_image,
        command=["worker"],
        labels={"ironclaw.instance": test_instance, "ironclaw.job_id": str(uuid.uuid4())},
    )
    other = docker_engine.api.create_container(
        test_agent_image,
        command=["worker"],
        labels={"ironclaw.instance": test_instance + "-other", "ironclaw.job_id": "x"},
    )
    try:
        orch = orchestrator_process(WORKER_IMAGE=test_agent_image)
        await orch.start()
        await wait_for(
            lambda: not docker_engine.api.containers(all=True, filters={"id": stray["Id"]}),
            timeout=15,
            what="the stray container to be removed",
        )
        # Another instance's container is never touched.
        assert docker_engine.api.containers(all=True, filters={"id": other["Id"]})
    finally:
        docker_engine.api.remove_container(other["Id"], force=True)


async def test_container_killed_from_outside_fails_the_job_within_5_s(
    orchestrator_process: Any, test_agent_image: str, docker_engine: Any
) -> None:
    orch = orchestrator_process(WORKER_IMAGE=test_agent_image)
    await orch.start()
    async with job_stub(orch.target) as stub:
        job = (await stub.CreateJob(pb.CreateJobRequest(task="sleep"))).job
        await wait_for(lambda: _get(stub, job.job_id), what="job")
        docker_engine.api.kill(f"ironclaw-worker-{job.job_id}")
        loop = asyncio.get_running_loop()
        start = loop.time()
        final = await wait_for(lambda: _terminal(stub, job.job_id), timeout=5, what="failure")
        assert loop.time() - start < 5
        assert final.state == pb.JOB_STATE_FAILED
        assert final.result.reason == pb.TERMINAL_REASON_EXITED
        assert final.result.exit_code == 137


async def test_job_past_its_deadline_fails_and_its_container_goes(
    orchestrator_process: Any, test_agent_image: str, docker_engine: Any
) -> None:
    orch = orchestrator_process(WORKER_IMAGE=test_agent_image)
    await orch.start()
    async with job_stub(orch.target) as stub:
        job = (
            await stub.CreateJob(
                pb.CreateJobRequest(task="sleep", limits=pb.JobLimits(timeout_seconds=2))
            )
        ).job
        final = await wait_for(lambda: _terminal(stub, job.job_id), timeout=15, what="timeout")
        assert final.state == pb.JOB_STATE_FAILED
        assert final.result.reason == pb.TERMINAL_REASON_TIMED_OUT
        assert "timed out after 2 s" in final.result.message
        await wait_for(
            lambda: not _containers(docker_engine, ironclaw_job_id=job.job_id),
            timeout=15,
            what="container removal",
        )


async def test_sigterm_leaves_jobs_running_for_the_next_start(
    orchestrator_process: Any, test_agent_image: str, docker_engine: Any, base_dir: Path
) -> None:
    orch = orchestrator_process(WORKER_IMAGE=test_agent_image)
    await orch.start()
    async with job_stub(orch.target) as stub:
        job = (await stub.CreateJob(pb.CreateJobRequest(task="sleep"))).job
        await wait_for(
            lambda: _status_is(stub, job.job_id, "test agent sleeping"), what="agent status"
        )
        seen = (await _get(stub, job.job_id)).last_sequence
    token = _token_of(docker_engine, job.job_id)
    assert orch.terminate() == 0
    assert _containers(docker_engine, ironclaw_job_id=job.job_id)
    await orch.start()
    async with job_stub(orch.target) as stub:
        again = await _get(stub, job.job_id)
        assert again.state == pb.JOB_STATE_RUNNING
        assert again.status_message == "test agent sleeping"
        # The job's token still works after the restart, and only for its job.
        url = f"http://172.17.0.1:{orch.env['ORCHESTRATOR_HTTP_PORT']}/worker/{job.job_id}/job"
        async with aiohttp.ClientSession() as http:
            response = await http.get(url, headers={"Authorization": f"Bearer {token}"})
            assert response.status == 200

        # A watcher that reconnects with its last sequence gets exactly what followed.
        async def stop_job() -> Any:
            return await stub.StopJob(pb.StopJobRequest(job_id=job.job_id))

        stop = asyncio.create_task(stop_job())
        missed = [
            u
            async for u in stub.WatchJob(pb.WatchJobRequest(job_id=job.job_id, after_sequence=seen))
        ]
        await stop
        assert [u.sequence for u in missed] == list(range(seen + 1, seen + 1 + len(missed)))
        assert missed[-1].result.reason == pb.TERMINAL_REASON_STOPPED_BY_OPERATOR
    assert (base_dir / "orchestrator.db").exists()


async def test_grants_survive_a_restart_only_when_sealed(
    orchestrator_process: Any, test_agent_image: str, docker_engine: Any
) -> None:
    grant = pb.CredentialGrant(name="github", credential_type="api_token", value="ghp_durable")
    sealed = orchestrator_process(
        WORKER_IMAGE=test_agent_image, ORCHESTRATOR_SECRETS_KEY="correct horse battery staple"
    )
    await sealed.start()
    async with job_stub(sealed.target) as stub:
        kept = (await stub.CreateJob(pb.CreateJobRequest(task="sleep", credentials=[grant]))).job
        # The test agent does not retry: let it finish its calls before the orchestrator dies.
        await wait_for(
            lambda: _status_is(stub, kept.job_id, "test agent sleeping"), what="agent status"
        )
    sealed.kill9()
    await sealed.start()
    token = _token_of(docker_engine, kept.job_id)
    url = f"http://172.17.0.1:{sealed.env['ORCHESTRATOR_HTTP_PORT']}/worker/{kept.job_id}"
    async with aiohttp.ClientSession() as http:
        response = await http.get(
            f"{url}/credentials", headers={"Authorization": f"Bearer {token}"}
        )
        assert await response.json() == {"github": "ghp_durable"}
    db = Path(sealed.env["IRONCLAW_BASE_DIR"]) / "orchestrator.db"
    assert b"ghp_durable" not in db.read_bytes()
    assert token.encode() not in db.read_bytes()
    async with job_stub(sealed.target) as stub:
        await stub.StopJob(pb.StopJobRequest(job_id=kept.job_id))
    sealed.kill9()

    plain = orchestrator_process(
        WORKER_IMAGE=test_agent_image,
        ORCHESTRATOR_PORT=sealed.env["ORCHESTRATOR_PORT"],
        ORCHESTRATOR_HTTP_PORT=sealed.env["ORCHESTRATOR_HTTP_PORT"],
    )
    await plain.start()
    async with job_stub(plain.target) as stub:
        lost = (await stub.CreateJob(pb.CreateJobRequest(task="sleep", credentials=[grant]))).job
        await wait_for(
            lambda: _status_is(stub, lost.job_id, "test agent sleeping"), what="agent status"
        )
    plain.kill9()
    await plain.start()
    async with job_stub(plain.target) as stub:
        final = await wait_for(lambda: _terminal(stub, lost.job_id), timeout=15, what="failure")
        assert final.result.reason == pb.TERMINAL_REASON_CREDENTIALS_LOST
        assert "ORCHESTRATOR_SECRETS_KEY" in final.result.message
    await wait_for(
        lambda: not _containers(docker_engine, ironclaw_job_id=lost.job_id), what="removal"
    )


async def test_the_llm_key_of_a_claude_job_survives_a_restart_as_a_digest(
    orchestrator_process: Any, test_agent_image: str, docker_engine: Any
) -> None:
    async with FakeAnthropic(api_key=UPSTREAM_KEY) as upstream:
        orch = orchestrator_process(
            CLAUDE_CODE_IMAGE=test_agent_image,
            CLAUDE_CODE_MEMORY_MB="256",
            ANTHROPIC_API_KEY=UPSTREAM_KEY,
            ANTHROPIC_BASE_URL=upstream.url,
            LLM_PROVIDER="none",
        )
        await orch.start()
        async with job_stub(orch.target) as stub:
            job = (
                await stub.CreateJob(
                    pb.CreateJobRequest(task="sleep", mode=pb.JOB_MODE_CLAUDE_CODE)
                )
            ).job
            await wait_for(
                lambda: _status_is(stub, job.job_id, "test agent sleeping"), what="agent status"
            )
        token = _token_of(docker_engine, job.job_id, "claude")
        base = f"http://172.17.0.1:{orch.env['ORCHESTRATOR_HTTP_PORT']}/worker/{job.job_id}"
        async with aiohttp.ClientSession() as http:
            bearer = {"Authorization": f"Bearer {token}"}
            claude = (await (await http.get(f"{base}/job", headers=bearer)).json())["claude"]
            assert claude["api_key"] is None  # no key travels: the bridge derives it
            key = llm_key_for(token, job.job_id)
            assert key.startswith("ircl_")
            orch.kill9()
            db = Path(orch.env["IRONCLAW_BASE_DIR"]) / "orchestrator.db"
            assert key.encode() not in db.read_bytes()
            await orch.start()

            upstream.enqueue_text("still here", input_tokens=3, output_tokens=1)
            call = {
                "model": "claude-sonnet-5-5",
                "max_tokens": 16,
                "messages": [{"role": "user", "content": "hi"}],
            }
            cli = {"x-api-key": key, "anthropic-version": "2023-06-01"}
            response = await http.post(f"{base}/anthropic/v1/messages", headers=cli, json=call)
            assert response.status == 200, await response.text()
            # The key is back as its digest only: there is nothing in clear to hand out again.
            info = await (await http.get(f"{base}/job", headers=bearer)).json()
            assert info["claude"]["api_key"] is None
            response = await http.get(f"{base}/credentials", headers={"x-api-key": key})
            assert response.status == 401

            async with job_stub(orch.target) as stub:
                await stub.StopJob(pb.StopJobRequest(job_id=job.job_id))
            response = await http.post(f"{base}/anthropic/v1/messages", headers=cli, json=call)
            assert response.status == 401
        assert upstream.last.api_key == UPSTREAM_KEY
        assert len(upstream.requests) == 1


async def _status_is(stub: Any, job_id: str, message: str) -> bool:
    return bool((await _get(stub, job_id)).status_message == message)


def _token_of(docker_engine: Any, job_id: str, prefix: str = "worker") -> str:
    env = docker_engine.api.inspect_container(f"ironclaw-{prefix}-{job_id}")["Config"]["Env"]
    return next(e.split("=", 1)[1] for e in env if e.startswith("IRONCLAW_WORKER_TOKEN="))


def test_the_store_of_a_crashed_writer_opens_cleanly(tmp_path: Path) -> None:
    """A process that queued writes and died with os._exit leaves a store that loads."""
    import subprocess
    import sys
    import textwrap

    db = tmp_path / "crash.db"
    code = textwrap.dedent(
        f"""
        import asyncio, os
        from datetime import UTC, datetime
        from orchestrator.domain.jobs import JobUpdate, UpdateKind
        from orchestrator.store.sqlite_store import SqliteJobStore
        async def main():
            store = SqliteJobStore(__import__("pathlib").Path({str(db)!r}))
            data = {{"job_id": "j", "order": 1, "state": "Running"}}
            store.save_job(data, b"digest")
            for i in range(1, 200):
                store.append_update("j", JobUpdate(i, datetime.now(UTC), UpdateKind.STATUS,
                                                   {{"message": "m", "iteration": i}}))
            await store.flush()
            for i in range(200, 400):
                store.append_update("j", JobUpdate(i, datetime.now(UTC), UpdateKind.STATUS,
                                                   {{"message": "m", "iteration": i}}))
            os._exit(9)
        asyncio.run(main())
        """
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=os.getcwd(), timeout=60)
    assert result.returncode == 9
    from orchestrator.store.sqlite_store import SqliteJobStore

    rows = SqliteJobStore(db).load_unfinished(history_limit=1000)
    assert len(rows) == 1
    assert rows[0].token_digest == b"digest"
    sequences = [u.sequence for u in rows[0].updates]
    assert sequences[:199] == list(range(1, 200))
    assert sequences == list(range(1, len(sequences) + 1))
