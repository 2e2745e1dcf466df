"""The Docker Swarm implementation of :class:`ContainerBackend`: one service per job, created
through a manager node's engine API (docker SDK, off the event loop).

A job's "container id" is its service's id. Task and node states are read by polling the
manager (Swarm has no events for task states): exits, OOM kills (inferred, see
``swarm_tasks``) and lost nodes come from there. Stopping a job scales its service to zero
(the task gets SIGTERM, then SIGKILL after the grace period), so its logs stay readable until
the service is removed.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import docker
import docker.errors
import requests.exceptions

from orchestrator.containers import swarm_network
from orchestrator.containers.backend import (
    ContainerBackend,
    ContainerExit,
    ContainerInfo,
    ContainerSpec,
    EngineCapabilities,
    JobNetworkRequest,
)
from orchestrator.containers.exit_notice import exit_event
from orchestrator.containers.spec import LABEL_INSTANCE
from orchestrator.containers.swarm_probe import probe_no_new_privileges
from orchestrator.containers.swarm_spec import SwarmPlacement, build_service
from orchestrator.containers.swarm_tasks import (
    NodeState,
    latest_task,
    nodes_by_id,
    pending_reason,
    service_info,
    task_container,
)
from orchestrator.errors import (
    ConfigError,
    EngineUnavailable,
    FailedPrecondition,
)
from orchestrator.logging import get_logger
from orchestrator.settings import Settings

T = TypeVar("T")
log = get_logger(__name__)

_CONNECTION_ERRORS = (
    requests.exceptions.ConnectionError,
    requests.exceptions.Timeout,
    ConnectionError,
    FileNotFoundError,
)
# How long a stop waits for the task to end beyond the grace period (the node's own latency).
STOP_MARGIN_S = 10.0


class ServiceStartFailed(FailedPrecondition):
    """The job's service was refused, or its task did not reach running (no node satisfies
    its constraints, the image is not on the chosen node): the cluster's state, not a fault."""


class SwarmBackend(ContainerBackend):
    """Runs each job as a one-replica service on the Swarm whose manager is ``base_url``."""

    # A job runs on whichever node: the orchestrator's directories are not there.
    binds_host_paths = False

    def __init__(self, settings: Settings, max_workers: int = 16) -> None:
        self._settings = settings
        self._base_url = (
            settings.swarm_manager_url
            or os.environ.get("DOCKER_HOST")
            or "unix:///var/run/docker.sock"
        )
        self._placement = SwarmPlacement(
            constraints=settings.swarm_constraints,
            reserve_nano_cpus=round(settings.swarm_reserve_cpus * 1e9),
            reserve_memory_bytes=settings.swarm_reserve_memory_bytes,
        )
        self._guard = not settings.swarm_allow_new_privileges
        self._executor = ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="swarm")
        self._client: docker.DockerClient | None = None
        self._client_lock = threading.Lock()
        self._max_pool = max_workers
        self._argv_cache: dict[str, tuple[list[str], list[str]]] = {}
        self.on_error: Callable[[str], None] | None = None

    @property
    def engine_address(self) -> str:
        return self._base_url

    # ---- plumbing -------------------------------------------------------------------------

    def _api(self) -> Any:
        # docker-py's service and task calls are untyped; their JSON is read by swarm_tasks.
        with self._client_lock:
            if self._client is None:
                try:
                    self._client = docker.DockerClient(
                        base_url=self._base_url, timeout=60, max_pool_size=self._max_pool
                    )
                except docker.errors.DockerException as exc:
                    raise self._unavailable(exc) from exc
            return self._client.api

    def _unavailable(self, exc: BaseException) -> EngineUnavailable:
        return EngineUnavailable(
            f"Swarm manager unreachable at {self._base_url}: {type(exc).__name__}. Is its "
            "dockerd running and the address right (SWARM_MANAGER_URL)?"
        )

    async def _run(self, fn: Callable[[], T]) -> T:
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._executor, fn)
        except _CONNECTION_ERRORS as exc:
            self._report_error("unreachable")
            raise self._unavailable(exc) from exc
        except docker.errors.DockerException as exc:
            if isinstance(exc, docker.errors.APIError):
                if exc.status_code != 404:
                    self._report_error(f"api_{exc.status_code or 'unknown'}")
                raise
            self._report_error("unreachable")
            raise self._unavailable(exc) from exc

    def _report_error(self, kind: str) -> None:
        if self.on_error is not None:
            self.on_error(kind)

    def report_errors_to(self, listener: Callable[[str], None]) -> None:
        self.on_error = listener

    # ---- engine ---------------------------------------------------------------------------

    async def ping(self) -> None:
        def ping() -> None:
            api = self._api()
            api.ping()
            swarm = api.info().get("Swarm") or {}
            if swarm.get("LocalNodeState") != "active" or not swarm.get("ControlAvailable"):
                raise ConfigError(
                    f"CONTAINER_BACKEND=swarm: the engine at {self._base_url} is not a Swarm "
                    "manager (`docker swarm init` there, or point SWARM_MANAGER_URL at a manager)"
                )

        await self._run(ping)

    async def image_exists(self, image: str) -> bool:
        # Only the manager's own images can be seen; each node must have the image too.
        def check() -> bool:
            try:
                self._api().inspect_image(image)
            except docker.errors.ImageNotFound:
                return False
            return True

        return await self._run(check)

    async def capabilities(self, probe_image: str | None = None) -> EngineCapabilities:
        """The smallest node that may run jobs bounds the CPU quota."""

        def read() -> EngineCapabilities:
            cpus = [
                int((row.get("Description") or {}).get("Resources", {}).get("NanoCPUs", 0) // 1e9)
                for row in self._api().nodes()
                if (row.get("Spec") or {}).get("Availability") == "active"
            ]
            return EngineCapabilities(
                cpus=min(cpus) if cpus else None, cpu_quota=True, storage_driver="swarm"
            )

        return await self._run(read)

    async def verify_hardening(self) -> None:
        """Each node that may run jobs is asked, by a probe task, whether its dockerd gives
        containers no-new-privileges; any that does not stops the start (with the fix), unless
        SWARM_ALLOW_NEW_PRIVILEGES=1."""
        if not self._guard:
            log.warning(
                "SWARM_ALLOW_NEW_PRIVILEGES=1: job containers may run without no-new-privileges"
            )
            return
        image = self._settings.worker_image
        without = await self._run(
            functools.partial(
                probe_no_new_privileges,
                self._api(),
                image,
                self._settings.instance,
                self._placement.constraints,
            )
        )
        if without:
            raise ConfigError(
                f"no-new-privileges is off on Swarm node(s) {', '.join(without)}: set "
                '"no-new-privileges": true in /etc/docker/daemon.json of each and restart its '
                "dockerd, constrain jobs away from them (SWARM_PLACEMENT_CONSTRAINTS), or accept "
                "it with SWARM_ALLOW_NEW_PRIVILEGES=1"
            )

    async def default_gateway(self) -> str | None:
        # Tasks run on other machines: the orchestrator's own bridge means nothing to them.
        return None

    # ---- jobs -----------------------------------------------------------------------------

    async def create_and_start(self, spec: ContainerSpec) -> str:
        return await self._run(functools.partial(self._create_and_start, spec))

    def _image_argv(self, image: str) -> tuple[list[str], list[str]]:
        """The image's entrypoint and command, read on the manager."""
        cached = self._argv_cache.get(image)
        if cached is not None:
            return cached
        try:
            config = self._api().inspect_image(image).get("Config") or {}
        except docker.errors.ImageNotFound:
            raise FailedPrecondition(
                f"image {image} not found on the Swarm manager: load it into every node "
                "(`docker save | docker -H <node> load`) or push it to a registry they share"
            ) from None
        argv = (list(config.get("Entrypoint") or []), list(config.get("Cmd") or []))
        self._argv_cache[image] = argv
        return argv

    def _create_and_start(self, spec: ContainerSpec) -> str:
        api = self._api()
        entrypoint, cmd = self._image_argv(spec.image) if self._guard else ([], [])
        service = build_service(
            spec,
            placement=self._placement,
            image_entrypoint=entrypoint,
            image_cmd=cmd,
            guard_no_new_privileges=self._guard,
            stop_grace_s=self._settings.stop_grace_s,
        )
        try:
            created = api.create_service(
                service.task_template,
                name=service.name,
                labels=service.labels,
                mode=service.mode,
                endpoint_spec=service.endpoint_spec,
            )
        except docker.errors.APIError as exc:
            raise ServiceStartFailed(_api_error_text("service create", exc)) from exc
        service_id = str(created["ID"])
        try:
            self._wait_running(service_id, spec)
        except BaseException:
            # Never leave a service behind that is not running its job.
            with contextlib.suppress(Exception):
                api.remove_service(service_id)
            raise
        return service_id

    def _wait_running(self, service_id: str, spec: ContainerSpec) -> None:
        api = self._api()
        deadline = time.monotonic() + self._settings.swarm_start_timeout_s
        task: Any = None
        while time.monotonic() < deadline:
            tasks = api.tasks(filters={"service": service_id})
            task = latest_task(tasks)
            state = str(((task or {}).get("Status") or {}).get("State", ""))
            if state == "running":
                return
            if state in ("complete", "failed", "shutdown", "rejected", "orphaned"):
                nodes = nodes_by_id(api.nodes())
                info = service_info(api.inspect_service(service_id), tasks, nodes)
                detail = info.detail or pending_reason(task)
                if state == "complete" or info.exit_code is not None:
                    # It ran and ended already: the exit watcher reports it like any other.
                    return
                raise ServiceStartFailed(f"the job's task did not start: {detail}")
            time.sleep(0.1)
        raise ServiceStartFailed(
            f"the job's task was not running within SWARM_START_TIMEOUT_S="
            f"{self._settings.swarm_start_timeout_s:g} s: {pending_reason(task)} (constraints: "
            f"{', '.join(self._placement.constraints + spec.placement) or 'none'}; is the image "
            "on the nodes that satisfy them?)"
        )

    async def stop(self, container_id: str, grace_seconds: int) -> None:
        await self._run(functools.partial(self._stop, container_id, grace_seconds))

    def _stop(self, service_id: str, grace_seconds: int) -> None:
        api = self._api()
        try:
            service = api.inspect_service(service_id)
        except docker.errors.NotFound:
            return
        replicas = ((service.get("Spec") or {}).get("Mode") or {}).get("Replicated") or {}
        info = self._inspect(service_id)
        if info is None or info.exited:
            return  # ended by itself: nothing to stop (and one update fewer before the removal)
        if replicas.get("Replicas", 1) != 0:
            try:
                api.update_service(
                    service_id,
                    version=int(service["Version"]["Index"]),
                    mode={"Replicated": {"Replicas": 0}},
                    fetch_current_spec=True,
                )
            except docker.errors.NotFound:
                return
        deadline = time.monotonic() + grace_seconds + STOP_MARGIN_S
        while time.monotonic() < deadline:
            info = self._inspect(service_id)
            if info is None or not info.running or info.lost_node:
                return
            time.sleep(0.2)
        log.warning("a job's task did not stop in time; removing its service", service=service_id)

    async def remove(self, container_id: str) -> None:
        def remove() -> None:
            with contextlib.suppress(docker.errors.NotFound):
                self._api().remove_service(container_id)

        await self._run(remove)

    async def inspect(self, container_id: str) -> ContainerInfo | None:
        return await self._run(functools.partial(self._inspect, container_id))

    def _inspect(self, service_id: str) -> ContainerInfo | None:
        api = self._api()
        try:
            service = api.inspect_service(service_id)
        except docker.errors.NotFound:
            return None
        tasks = api.tasks(filters={"service": service_id})
        return service_info(service, tasks, nodes_by_id(api.nodes()))

    async def list_managed(self, instance: str) -> list[ContainerInfo]:
        def list_all() -> list[ContainerInfo]:
            return self._snapshot(instance)

        return await self._run(list_all)

    def _snapshot(self, instance: str) -> list[ContainerInfo]:
        """Every service of this instance with its state (and, when ended, why)."""
        for _ in range(2):
            try:
                return self._list_services(instance)
            except docker.errors.NotFound:
                continue  # one was removed between the two listings: list again
        return self._list_services(instance)

    def _list_services(self, instance: str) -> list[ContainerInfo]:
        api = self._api()
        services = api.services(filters={"label": f"{LABEL_INSTANCE}={instance}"})
        if not services:
            return []
        tasks_of: dict[str, list[dict[str, Any]]] = {}
        ids = [str(service.get("ID", "")) for service in services]
        for task in api.tasks(filters={"service": ids}):
            tasks_of.setdefault(str(task.get("ServiceID", "")), []).append(task)
        nodes = nodes_by_id(api.nodes())
        return [
            service_info(service, tasks_of.get(str(service.get("ID", "")), []), nodes)
            for service in services
        ]

    async def task_process(self, container_id: str) -> tuple[str, str, int] | None:
        """The running task of a job's service: (node hostname, container id on that node,
        host pid), for checks on the node itself; None when it is not running."""

        def read() -> tuple[str, str, int] | None:
            api = self._api()
            task = latest_task(api.tasks(filters={"service": container_id}))
            if task is None or (task.get("Status") or {}).get("State") != "running":
                return None
            node: NodeState | None = nodes_by_id(api.nodes()).get(str(task.get("NodeID", "")))
            container, pid = task_container(task)
            return (node.hostname if node else "?", container, pid)

        return await self._run(read)

    async def logs_tail(self, container_id: str, lines: int) -> str:
        def tail() -> str:
            info = self._inspect(container_id)
            if info is None or info.lost_node is not None:
                return ""  # a down node has no logs to give (the manager would wait for it)
            try:
                raw = self._api().service_logs(
                    container_id, stdout=True, stderr=True, tail=lines, follow=False
                )
            except docker.errors.NotFound:
                return ""
            return _join(raw)

        if lines <= 0:
            return ""
        return await self._run(tail)

    async def stream_logs(
        self, container_id: str, follow: bool, tail_lines: int
    ) -> AsyncIterator[bytes]:
        # A service's log stream does not end when its task does: with ``follow`` it is read
        # until the task has ended, then once more for what came last.
        sent = 0
        tail: int | str = tail_lines if tail_lines > 0 else "all"
        while True:
            info = await self.inspect(container_id)
            text = await self._run(functools.partial(self._logs, container_id, tail))
            if text is None:
                return
            if len(text) > sent:
                yield text[sent:]
                sent = len(text)
            ended = info is None or info.exited or info.lost_node is not None
            if not follow or ended:
                return
            tail = "all" if tail_lines <= 0 else tail_lines + 10_000
            await asyncio.sleep(self._settings.swarm_poll_interval_s)

    def _logs(self, service_id: str, tail: int | str) -> bytes | None:
        try:
            raw = self._api().service_logs(
                service_id, stdout=True, stderr=True, tail=tail, follow=False
            )
        except docker.errors.NotFound:
            return None
        return _join(raw).encode("utf-8")

    async def exits(self, instance: str) -> AsyncIterator[ContainerExit]:
        """Polls the instance's services; each end (exit, OOM, lost node) is reported once."""
        reported: set[str] = set()
        interval = self._settings.swarm_poll_interval_s
        while True:
            try:
                rows = await self._run(functools.partial(self._snapshot, instance))
            except (EngineUnavailable, docker.errors.APIError) as exc:
                log.warning("reading Swarm task states failed; retrying", error=str(exc))
                await asyncio.sleep(max(interval, 1.0))
                continue
            present = set()
            for info in rows:
                present.add(info.container_id)
                if info.container_id in reported:
                    continue
                if info.exited or info.lost_node is not None:
                    reported.add(info.container_id)
                    yield exit_event(info)
            reported &= present
            await asyncio.sleep(interval)

    # ---- isolated job networks (swarm_network) --------------------------------------------

    async def create_job_network(self, request: JobNetworkRequest) -> str:
        """The job's internal overlay and its relay service (on the job's nodes' constraints:
        they have the images)."""
        return await self._run(
            functools.partial(
                swarm_network.create_job_network,
                self._api(),
                request,
                self._placement.constraints,
            )
        )

    async def remove_job_network(self, instance: str, job_id: str) -> None:
        await self._run(
            functools.partial(swarm_network.remove_job_network, self._api(), instance, job_id)
        )

    async def list_job_networks(self, instance: str) -> list[str]:
        return await self._run(
            functools.partial(swarm_network.list_job_networks, self._api(), instance)
        )

    async def close(self) -> None:
        client = self._client
        self._client = None
        if client is not None:
            with contextlib.suppress(Exception):
                client.close()
        self._executor.shutdown(wait=False, cancel_futures=True)


def _join(raw: Any) -> str:
    if isinstance(raw, bytes):
        return raw.decode("utf-8", "replace")
    if isinstance(raw, Iterator) or hasattr(raw, "__iter__"):
        return b"".join(chunk for chunk in raw if isinstance(chunk, bytes)).decode(
            "utf-8", "replace"
        )
    return str(raw)


def _api_error_text(action: str, exc: docker.errors.APIError) -> str:
    explanation = exc.explanation or str(exc)
    if isinstance(explanation, bytes):
        explanation = explanation.decode("utf-8", "replace")
    return f"docker {action} failed ({exc.status_code}): {explanation}"
