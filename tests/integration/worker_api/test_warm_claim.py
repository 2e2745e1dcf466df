"""The claim channel end to end on the in-memory engine: the waiter of ``ironclaw-worker
--await-claim`` (``worker/claim.py``) long-polls the real worker API with its slot's secret,
receives the job id and token when a job claims the slot, and the secret dies with the claim."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import pytest

from ironclaw_contract import container_env
from orchestrator.domain.jobs import CreateJobRequest, JobState
from tests.fakes.fake_backend import FakeBackend
from tests.helpers import wait_for
from worker.claim import ClaimRefused, await_claim
from worker.client import WorkerApiClient


async def test_the_waiter_gets_its_claim_and_then_its_secret_opens_nothing(
    start_orch: Any, make_settings: Any
) -> None:
    orch = await start_orch(make_settings(WARM_POOL="worker=1"))
    pool = orch.manager.warm_pool
    assert pool is not None
    backend = orch.backend
    assert isinstance(backend, FakeBackend)
    slot = await wait_for(
        lambda: next((s for s in pool._slots.values() if s.ready), None), what="a ready slot"
    )
    spec = backend.containers[slot.container_id].spec
    url = f"http://{orch.http_host}:{orch.http_port}"
    # The container's environment, with the URL as this host reaches the worker API.
    env = {**spec.env, container_env.ORCHESTRATOR_URL: url}
    secret = env[container_env.WARM_SLOT_SECRET]
    waiting = asyncio.create_task(asyncio.to_thread(await_claim, env))
    await wait_for(lambda: slot._poller is not None, what="the waiter's poll")
    creating = asyncio.create_task(orch.manager.create_job(CreateJobRequest(task="t")))
    claim = await asyncio.wait_for(waiting, 10)
    # Its first call as the job confirms the claim; the job then runs in the slot.
    async with (
        aiohttp.ClientSession() as http,
        http.get(
            f"{url}/worker/{claim.job_id}/job",
            headers={"Authorization": f"Bearer {claim.token}"},
        ) as response,
    ):
        assert response.status == 200
        assert (await response.json())["job_id"] == claim.job_id
    created = await asyncio.wait_for(creating, 10)
    assert created.job.state is JobState.RUNNING
    assert created.job.container_name == slot.container_name
    assert (claim.job_id, claim.token) == (created.job.job_id, created.token)
    # What the entry point reads next: the job's identity, the slot's gone from the env.
    assert env[container_env.JOB_ID] == claim.job_id
    assert env[container_env.WORKER_TOKEN] == claim.token
    assert container_env.WARM_SLOT_SECRET not in env
    assert container_env.WARM_SLOT_ID not in env
    assert "***" in repr(claim)
    assert claim.token not in repr(claim)
    again = {**spec.env, container_env.ORCHESTRATOR_URL: url}
    assert again[container_env.WARM_SLOT_SECRET] == secret
    with pytest.raises(ClaimRefused):
        await asyncio.to_thread(await_claim, again)


async def test_the_claim_route_refuses_bad_input_with_the_spec_codes(
    start_orch: Any, make_settings: Any
) -> None:
    orch = await start_orch(make_settings(WARM_POOL="worker=1"))
    url = f"http://{orch.http_host}:{orch.http_port}"
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{url}/warm/not-a-uuid/claim") as response:
            assert response.status == 400
            assert (await response.json())["error"] == "invalid_request"
        slot = "0b7e4f9e-3c1a-4d6b-9a55-2f4f6f0d7c11"
        async with http.get(f"{url}/warm/{slot}/claim") as response:
            assert response.status == 401
            assert (await response.json())["message"] == "Invalid slot secret"
        async with http.get(
            f"{url}/warm/{slot}/claim", headers={"Authorization": "Bearer nope"}
        ) as response:
            assert response.status == 401


def test_the_waiter_refuses_an_environment_without_a_slot() -> None:
    with pytest.raises(ValueError, match=container_env.WARM_SLOT_ID):
        await_claim({container_env.ORCHESTRATOR_URL: "http://o:1"})


async def test_the_waiter_verifies_a_worker_api_served_over_tls_with_the_ca_it_was_given(
    start_orch: Any, make_settings: Any, tmp_path: Any
) -> None:
    # The operator's files (made here by the same code as the orchestrator's own CA), for the
    # address this host reaches the worker API at.
    from orchestrator.certificates import CA_FILE
    from orchestrator.http_api.worker_tls import (
        SERVER_FILE,
        SERVER_KEY_FILE,
        TLS_DIR_NAME,
        own_tls,
    )

    own_tls(tmp_path, ["127.0.0.1"])
    files = tmp_path / TLS_DIR_NAME
    orch = await start_orch(
        make_settings(
            WARM_POOL="worker=1",
            WORKER_API_TLS_CERT=str(files / SERVER_FILE),
            WORKER_API_TLS_KEY=str(files / SERVER_KEY_FILE),
            WORKER_API_CA=str(files / CA_FILE),
        )
    )
    pool = orch.manager.warm_pool
    assert pool is not None
    backend = orch.backend
    assert isinstance(backend, FakeBackend)
    slot = await wait_for(
        lambda: next((s for s in pool._slots.values() if s.ready), None), what="a ready slot"
    )
    spec = backend.containers[slot.container_id].spec
    assert spec.env[container_env.ORCHESTRATOR_URL].startswith("https://")
    assert spec.env[container_env.ORCHESTRATOR_CA] == (files / CA_FILE).read_text()
    url = f"https://127.0.0.1:{orch.http_port}"
    env = {**spec.env, container_env.ORCHESTRATOR_URL: url}
    waiting = asyncio.create_task(asyncio.to_thread(await_claim, env))
    await wait_for(lambda: slot._poller is not None, what="the waiter's poll over TLS")
    creating = asyncio.create_task(orch.manager.create_job(CreateJobRequest(task="t")))
    claim = await asyncio.wait_for(waiting, 10)
    # Its first call as the job, through the worker's own client over TLS, confirms the claim.
    ca_pem = env[container_env.ORCHESTRATOR_CA]
    with WorkerApiClient(url, claim.job_id, claim.token, ca_pem=ca_pem) as client:
        job = await asyncio.to_thread(client.get_job)
    assert job["job_id"] == claim.job_id
    created = await asyncio.wait_for(creating, 10)
    assert (claim.job_id, claim.token) == (created.job.job_id, created.token)
