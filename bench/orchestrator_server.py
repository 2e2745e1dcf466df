"""The real orchestrator, started in its own process for a benchmark.

``python -m bench.orchestrator_server [--sleep-job]`` reads its settings from the environment
(as ``ironclaw serve`` does), starts the gRPC control plane and the worker API with the real
Docker backend, and prints ``READY {"grpc_port", "http_port", "http_host", ...}``.

* Every job's first authenticated worker-API call is reported as one stdout line
  ``{"event": "first_call", "job_id", "t_ns"}`` (``time.monotonic_ns()``: CLOCK_MONOTONIC,
  comparable with the driver process's clock on the same host).
* Without ``--sleep-job`` (the start benchmark), the engine work of each job is reported too:
  ``container_begin`` and ``container_end`` around the Docker backend's ``create_and_start``.
* ``--provider sdk-post|aiohttp`` replaces the configured LLM provider with one of
  ``bench.experimental_providers`` (the proxy benchmark's ``--experiments``).
* ``--sleep-job`` creates one job in-process (task ``sleep``: the test agent calls ``GET /job``
  and then sleeps) and adds its ``job_id`` and token to READY once its container's first call
  has arrived, for the proxy benchmark to send LLM calls with. The first-call hook is removed
  then, so the measured path is the product's own.

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
from orchestrator.containers.docker_backend import DockerBackend
from orchestrator.containers.spec import LABEL_JOB_ID
from orchestrator.jobs.manager import ContainerJobManager
from orchestrator.jobs.models import CreateJobRequest
from orchestrator.jobs.record import JobRecord
from orchestrator.logging import configure_logging
from orchestrator.service import Orchestrator, start_orchestrator
from orchestrator.settings import Settings


def report_first_calls(manager: ContainerJobManager) -> asyncio.Event:
    """Wraps the manager's token check to report each job's first authenticated call.

    The worker API calls ``manager.authenticate`` at the start of every ``/worker/{id}/...``
    handler, so the time taken there is when the call has arrived and been parsed, as the raw
    baseline's server takes it in its handler. Returns an event set on the first call of all.
    """
    original = manager.authenticate
    seen: set[str] = set()
    first = asyncio.Event()

    def authenticate(job_id: str, token: str) -> JobRecord:
        job = original(job_id, token)
        if job_id not in seen:
            now = time.monotonic_ns()
            seen.add(job_id)
            emit({"event": "first_call", "job_id": job_id, "t_ns": now})
            first.set()
        return job

    manager.authenticate = authenticate  # type: ignore[method-assign]
    return first


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


def stop_reporting_first_calls(manager: ContainerJobManager) -> None:
    # The instance attribute shadowed the method; without it the class's own method serves.
    vars(manager).pop("authenticate", None)


async def run(sleep_job: bool, job_wait_s: float, provider_kind: str) -> None:
    settings = Settings.from_env()
    configure_logging(settings.log_level, settings.log_format)
    provider = (
        None if provider_kind == "product" else build_experimental_provider(provider_kind, settings)
    )
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    backend = DockerBackend()
    if not sleep_job:
        report_container_starts(backend)
    orch = await start_orchestrator(settings, backend=backend, provider=provider)
    try:
        first_call = report_first_calls(orch.manager)
        ready: dict[str, Any] = {
            "grpc_port": orch.grpc_port,
            "http_port": orch.http_port,
            "http_host": orch.http_host,
            "pid": os.getpid(),
        }
        if sleep_job:
            ready.update(await _start_sleep_job(orch, first_call, job_wait_s))
            stop_reporting_first_calls(orch.manager)
        announce_ready(ready)
        await stop.wait()
    finally:
        await orch.stop(drain=True, grace=2)


async def _start_sleep_job(
    orch: Orchestrator, first_call: asyncio.Event, wait_s: float
) -> dict[str, Any]:
    if orch.settings.worker_network == "host":
        # A host-network container reaches the worker API on loopback, where it listens.
        orch.manager.set_orchestrator_url(f"http://{orch.http_host}:{orch.http_port}")
    created = await orch.manager.create_job(CreateJobRequest(task="sleep"))
    try:
        await asyncio.wait_for(first_call.wait(), wait_s)
    except TimeoutError:
        tail = await orch.backend.logs_tail(orch.manager.container_id(created.job.job_id) or "", 20)
        raise RuntimeError(
            f"the sleep job's container never called the worker API:\n{tail}"
        ) from None
    return {"job_id": created.job.job_id, "token": created.token}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sleep-job", action="store_true")
    parser.add_argument("--job-wait", type=float, default=60.0)
    parser.add_argument(
        "--provider",
        choices=("product", *EXPERIMENTAL_PROVIDERS),
        default="product",
        help="product: the one LLM_PROVIDER configures; else a bench experiment",
    )
    args = parser.parse_args()
    asyncio.run(run(args.sleep_job, args.job_wait, args.provider))


if __name__ == "__main__":
    main()
