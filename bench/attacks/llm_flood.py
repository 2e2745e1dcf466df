"""A job's token holder fires its LLM calls 100 at a time, over and over, against a budget: every
call is reserved on the job's ledger before it goes upstream, so what the upstream is asked to
serve stays within the budget however many calls are in flight, and the refused ones never
leave the orchestrator."""

from __future__ import annotations

import asyncio
from typing import Any

from bench.attacks import AttackTarget

CONCURRENCY = 100
# The flood comes from an address of its own, as a job container's calls do: from the probes'
# address it would meet the per-source connection cap the probes share, and the bench would
# time the cap instead of the service (Linux answers the whole of 127/8 on loopback).
FLOOD_SOURCE = ("127.0.0.2", 0)


async def llm_flood(target: AttackTarget, stop: asyncio.Event) -> dict[str, Any]:
    """Runs until ``stop``; returns calls answered, refused, failed, and the job's usage."""
    import aiohttp
    import grpc
    from grpc import aio

    from ironclaw_client.api.v1 import jobs_pb2 as pb
    from ironclaw_client.api.v1 import jobs_pb2_grpc as pb_grpc

    job_id, token = target.jobs[-1]
    url = f"{target.worker_api_url}/worker/{job_id}/llm/complete"
    headers = {"Authorization": f"Bearer {token}"}
    body = {"messages": [{"role": "user", "content": "write as much as you can"}]}
    counts = {"answered": 0, "refused": 0, "failed": 0}

    async def one(session: aiohttp.ClientSession) -> None:
        try:
            async with session.post(url, json=body, headers=headers) as response:
                await response.read()
                key = {200: "answered", 429: "refused"}.get(response.status, "failed")
        except (aiohttp.ClientError, TimeoutError):
            key = "failed"
        counts[key] += 1

    timeout = aiohttp.ClientTimeout(total=60)
    connector = aiohttp.TCPConnector(limit=CONCURRENCY, local_addr=FLOOD_SOURCE)
    async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
        while not stop.is_set():
            await asyncio.gather(*(one(session) for _ in range(CONCURRENCY)))
    async with aio.insecure_channel(target.grpc_target) as channel:
        stub = pb_grpc.JobServiceStub(channel)
        try:
            job = (await stub.GetJob(pb.GetJobRequest(job_id=job_id), timeout=10)).job
        except grpc.RpcError:
            return {**counts, "usage_tokens": None}
    used = job.usage.input_tokens + job.usage.output_tokens
    budget = job.limits.llm_token_budget
    return {
        **counts,
        "usage_calls": job.usage.calls,
        "usage_tokens": used,
        "token_budget": budget,
        "within_budget": budget == 0 or used <= budget,
    }
