"""The real orchestrator, started in its own process for a benchmark.

``python -m bench.orchestrator_server [--sleep-job]`` reads its settings from the environment
(as ``ironclaw serve`` does), starts the gRPC control plane and the worker API with the real
backend CONTAINER_BACKEND names (Docker by default), and prints
``READY {"grpc_port", "http_port", "http_host", ...}``.

* Every job's first authenticated worker-API call is reported as one stdout line
  ``{"event": "first_call", "job_id", "t_ns"}`` (``time.monotonic_ns()``: CLOCK_MONOTONIC,
  comparable with the driver process's clock on the same host).
* Without ``--sleep-job`` (the start benchmark), the engine work of each job is reported too:
  ``container_begin`` and ``container_end`` around the Docker backend's ``create_and_start``.
* ``--provider sdk-post|aiohttp`` replaces the configured LLM provider with one of
  ``bench.experimental_providers`` (the proxy benchmark's ``--experiments``).
* ``--sleep-job`` creates one job in-process (task ``sleep``: the test agent calls ``GET /job``,
  posts one status line and then sleeps) and adds its ``job_id`` and token to READY once that
  status has arrived, for the proxy benchmark to send LLM calls with; ``--sleep-jobs N``
  creates N such jobs at once and adds them all as ``jobs`` (``[{"job_id", "token"}]``). The
  first-call hook is not installed then, so the measured path is the product's own.

SIGTERM stops the orchestrator with ``drain``: every job container is stopped and removed.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import time
from typing import Any

from bench.experimental_providers import EXPERIMENTAL_PROVIDERS, build_experimental_provider
from bench.procs import announce_ready, emit
from orchestrator.containers.backend import ContainerBackend, ContainerSpec
from orchestrator.containers.spec import LABEL_JOB_ID
from orchestrator.domain.jobs import CreateJobRequest, JobSnapshot, UpdateKind
from orchestrator.jobs.manager import ContainerJobManager
from orchestrator.jobs.record import JobRecord
from orchestrator.logging import configure_logging
from orchestrator.service import Orchestrator, build_backend, start_orchestrator
from orchestrator.settings import Settings


def report_first_calls(manager: ContainerJobManager) -> None:
    """Wraps the manager's token check to report each job's first authenticated call.

    The worker API calls ``manager.authenticate`` at the start of every ``/worker/{id}/...``
    handler, so the time taken there is when the call has arrived and been parsed, as the raw
    baseline's server takes it in its handler.
    """
    original = manager.authenticate
    seen: set[str] = set()

    def authenticate(job_id: str, token: str) -> JobRecord:
        job = original(job_id, token)
        if job_id not in seen:
            now = time.monotonic_ns()
            seen.add(job_id)
            emit({"event": "first_call", "job_id": job_id, "t_ns": now})
        return job

    manager.authenticate = authenticate  # type: ignore[method-assign]


def report_container_starts(backend: ContainerBackend) -> None:
    """Wraps the backend's ``create_and_start`` to report when the engine work of each job
    begins and ends (``container_begin`` / ``container_end``), so the start benchmark can
    split the orchestrator's time into its own work, the engine's, and the container's boot."""
    original = backend.create_and_start

    async def create_and_start(spec: ContainerSpec) -> str:
        job_id = spec.labels.get(LABEL_JOB_ID, "")
        emit({"event": "container_begin", "job_id": job_id, "t_ns": time.monotonic_ns()})
        container_id = await original(spec)
        emit({"event": "container_end", "job_id": job_id, "t_ns": time.monotonic_ns()})
        return container_id

    backend.create_and_start = create_and_start  # type: ignore[method-assign]


async def run(sleep_jobs: int, job_wait_s: float, provider_kind: str) -> None:
    settings = Settings.from_env()
    configure_logging(settings.log_level, settings.log_format)
    provider = (
        None if provider_kind == "product" else build_experimental_provider(provider_kind, settings)
    )
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    backend = build_backend(settings)
    if not sleep_jobs:
        report_container_starts(backend)
    orch = await start_orchestrator(settings, backend=backend, provider=provider)
    try:
        ready: dict[str, Any] = {
            "grpc_port": orch.grpc_port,
            "http_port": orch.http_port,
            "http_host": orch.http_host,
            "metrics_port": orch.metrics_port or 0,
            "pid": os.getpid(),
        }
        if sleep_jobs:
            jobs = await _start_sleep_jobs(orch, sleep_jobs, job_wait_s)
            ready.update({**jobs[0], "jobs": jobs})
        else:
            report_first_calls(orch.manager)
        announce_ready(ready)
        await stop.wait()
    finally:
        await orch.stop(drain=True, grace=2)


async def _start_sleep_jobs(orch: Orchestrator, count: int, wait_s: float) -> list[dict[str, str]]:
    """Creates ``count`` sleep jobs at once; returns them once each one's agent has posted
    its status line (after its ``GET /job``), so no call of theirs lands in a measurement."""
    if orch.settings.worker_network == "host":
        # A host-network container reaches the worker API on loopback, where it listens.
        orch.manager.set_orchestrator_url(f"http://{orch.http_host}:{orch.http_port}")
    created = await asyncio.gather(
        *(orch.manager.create_job(CreateJobRequest(task="sleep")) for _ in range(count))
    )
    for job in created:
        try:
            await asyncio.wait_for(_agent_settled(orch.manager, job.job.job_id), wait_s)
        except TimeoutError:
            container = orch.manager.container_id(job.job.job_id) or ""
            tail = await orch.backend.logs_tail(container, 20)
            raise RuntimeError(
                f"the sleep job's container never posted its status:\n{tail}"
            ) from None
    return [{"job_id": job.job.job_id, "token": job.token or ""} for job in created]


async def _agent_settled(manager: ContainerJobManager, job_id: str) -> None:
    async for item in manager.watch(job_id):
        if isinstance(item, JobSnapshot):
            if item.status_message:
                return
            if item.state.is_terminal:
                break
        elif item.kind is UpdateKind.STATUS:
            return
    raise RuntimeError(f"sleep job {job_id} ended before its agent reported")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sleep-job", action="store_true", help="same as --sleep-jobs 1")
    parser.add_argument("--sleep-jobs", type=int, default=0, metavar="N")
    parser.add_argument("--job-wait", type=float, default=120.0)
    parser.add_argument(
        "--provider",
        choices=("product", *EXPERIMENTAL_PROVIDERS),
        default="product",
        help="product: the one LLM_PROVIDER configures; else a bench experiment",
    )
    args = parser.parse_args()
    sleep_jobs = max(args.sleep_jobs, 1 if args.sleep_job else 0)
    asyncio.run(run(sleep_jobs, args.job_wait, args.provider))


if __name__ == "__main__":
    main()
