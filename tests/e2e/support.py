"""Helpers for the end-to-end tests: drive jobs through the gRPC control plane and read what the
real worker did from the job's history."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
from google.protobuf import json_format

from ironclaw_client.api.v1 import jobs_pb2 as pb
from orchestrator.llm.scripted_provider import ScriptedProvider, load_script
from orchestrator.llm.types import CompletionRequest, CompletionResult
from tests.helpers import wait_for

SCRIPTS = Path(__file__).parent / "scripts"
TERMINAL_STATES = (pb.JOB_STATE_STOPPED, pb.JOB_STATE_FAILED)


@dataclass(frozen=True)
class Event:
    """One worker event from the job's history, its data as plain JSON values."""

    sequence: int
    event_type: str
    data: dict[str, Any]


async def create(stub: Any, task: str, **kwargs: Any) -> Any:
    """Creates a job through the control plane; returns the ``pb.Job``."""
    return (await stub.CreateJob(pb.CreateJobRequest(task=task, **kwargs))).job


async def get(stub: Any, job_id: str) -> Any:
    return (await stub.GetJob(pb.GetJobRequest(job_id=job_id))).job


async def wait_terminal(stub: Any, job_id: str, timeout: float = 60) -> Any:
    """The job once it is Stopped or Failed."""

    async def terminal() -> Any:
        job = await get(stub, job_id)
        return job if job.state in TERMINAL_STATES else None

    return await wait_for(terminal, timeout=timeout, interval=0.1, what=f"job {job_id} to end")


async def history(stub: Any, job_id: str) -> list[Any]:
    """Every retained update of the job, from its first (the stream ends after the result)."""
    request = pb.WatchJobRequest(job_id=job_id, from_start=True)
    return [update async for update in stub.WatchJob(request, timeout=30)]


def events(updates: list[Any]) -> list[Event]:
    return [
        Event(u.sequence, u.event.event_type, json_format.MessageToDict(u.event.data))
        for u in updates
        if u.WhichOneof("update") == "event"
    ]


def tool_events(updates: list[Any]) -> list[tuple[str, str]]:
    """``(event_type, tool_name)`` of every tool_use and tool_result, in order."""
    return [
        (e.event_type, e.data["tool_name"])
        for e in events(updates)
        if e.event_type in ("tool_use", "tool_result")
    ]


def tool_results(updates: list[Any], tool_name: str | None = None) -> list[dict[str, Any]]:
    return [
        e.data
        for e in events(updates)
        if e.event_type == "tool_result" and tool_name in (None, e.data["tool_name"])
    ]


async def wait_for_event(
    stub: Any, job_id: str, event_type: str, tool_name: str, timeout: float = 60
) -> Event:
    """Follows the job live until the worker reports ``event_type`` for ``tool_name``."""
    call = stub.WatchJob(pb.WatchJobRequest(job_id=job_id, from_start=True))

    async def first_match() -> Event:
        async for update in call:
            if update.WhichOneof("update") == "result":
                raise AssertionError(
                    f"job {job_id} ended before a {event_type} of {tool_name}: "
                    f"{update.result.message}"
                )
            if update.WhichOneof("update") != "event":
                continue
            data = json_format.MessageToDict(update.event.data)
            if update.event.event_type == event_type and data.get("tool_name") == tool_name:
                return Event(update.sequence, event_type, data)
        raise AssertionError(f"the watch of job {job_id} ended without a {event_type}")

    try:
        return await asyncio.wait_for(first_match(), timeout)
    finally:
        call.cancel()


def containers(docker_engine: Any, job_id: str) -> list[Any]:
    """The job's containers, without inspecting them (one may vanish while they are listed)."""
    return docker_engine.containers.list(
        all=True, sparse=True, filters={"label": f"ironclaw.job_id={job_id}"}
    )


def inspect_container(docker_engine: Any, job_id: str) -> dict[str, Any]:
    """``docker inspect`` of the job's one (still existing) container."""
    [container] = containers(docker_engine, job_id)
    attrs: dict[str, Any] = docker_engine.api.inspect_container(container.id)
    return attrs


def container_env(docker_engine: Any, job_id: str) -> dict[str, str]:
    """The environment the orchestrator gave the job's (still existing) container."""
    env = inspect_container(docker_engine, job_id)["Config"]["Env"]
    return dict(item.split("=", 1) for item in env)


async def wait_removed(docker_engine: Any, job_id: str) -> None:
    await wait_for(
        lambda: containers(docker_engine, job_id) == [], timeout=30, what="container removal"
    )


async def worker_api_get_job_status(orch: Any, job_id: str, token: str) -> tuple[int, Any]:
    """``GET /worker/{id}/job`` with ``token``, as the container would call it."""
    url = f"http://{orch.http_host}:{orch.http_port}/worker/{job_id}/job"
    async with (
        aiohttp.ClientSession() as http,
        http.get(url, headers={"Authorization": f"Bearer {token}"}) as response,
    ):
        return response.status, await response.json()


class RecordingScriptedProvider(ScriptedProvider):
    """The scripted provider, keeping every request it answered (it is stateless otherwise, so
    this is how a test sees what reached the model)."""

    def __init__(self, script: Path) -> None:
        super().__init__(load_script(script), source=script.name)
        self.requests: list[CompletionRequest] = []

    async def complete(self, request: CompletionRequest) -> CompletionResult:
        self.requests.append(request)
        return await super().complete(request)
