"""The Docker implementation of :class:`ContainerBackend` (docker SDK, off the event loop).

docker-py is blocking, so every call runs on one dedicated thread pool, as dockerspawner does.
404 means "gone" and is not an error for stop/remove; the events stream is re-subscribed after
any break, from the time of the last event seen, since docker-py does not reconnect it.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import ipaddress
import os
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

import docker
import docker.errors
import requests.exceptions

from orchestrator.containers import docker_network
from orchestrator.containers.backend import (
    ContainerBackend,
    ContainerExit,
    ContainerInfo,
    ContainerSpec,
    DirectoryIdentity,
    EngineCapabilities,
    JobNetworkRequest,
)
from orchestrator.containers.host_paths import verify_projects_dir_on_host
from orchestrator.containers.mount_identity import (
    STAT_COMMAND,
    identity_through_proc,
    parse_stat_output,
)
from orchestrator.containers.spec import LABEL_INSTANCE, LABEL_JOB_ID, LABEL_WARM_SLOT
from orchestrator.errors import EngineUnavailable, FailedPrecondition, OrchestratorError
from orchestrator.logging import get_logger

T = TypeVar("T")
log = get_logger(__name__)

_CONNECTION_ERRORS = (
    requests.exceptions.ConnectionError,
    requests.exceptions.Timeout,
    ConnectionError,
    FileNotFoundError,
)


class ImageMissing(FailedPrecondition):
    """The job's image is not present on the engine (no registry can be assumed)."""

    def __init__(self, image: str) -> None:
        super().__init__(f"image {image} not found: build it with `make images`")
        self.image = image


class ContainerStartFailed(OrchestratorError):
    """The engine refused to create or start the container."""


class DockerBackend(ContainerBackend):
    """Runs job containers on a Docker engine reached through ``DOCKER_HOST`` or the socket."""

    def __init__(self, base_url: str | None = None, max_workers: int = 32) -> None:
        self._base_url = base_url or os.environ.get("DOCKER_HOST") or "unix:///var/run/docker.sock"
        self._executor = ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="docker")
        self._client: docker.DockerClient | None = None
        self._client_lock = threading.Lock()
        self._max_pool = max_workers
        # Called with "unreachable" or "api_<status>" for each failed engine call (metrics).
        self.on_error: Callable[[str], None] | None = None
        # Set by capabilities(): whether create may pass storage_opt size (else it is refused).
        self._writable_layer_limit = False

    @property
    def limits_writable_layer(self) -> bool:
        """Whether job containers get a writable-layer size (found by :meth:`capabilities`)."""
        return self._writable_layer_limit

    @property
    def engine_address(self) -> str:
        return self._base_url

    def _api(self) -> docker.APIClient:
        with self._client_lock:
            if self._client is None:
                try:
                    self._client = docker.DockerClient(
                        base_url=self._base_url,
                        timeout=60,
                        max_pool_size=self._max_pool,
                    )
                except docker.errors.DockerException as exc:
                    raise self._unavailable(exc) from exc
            return self._client.api

    def _unavailable(self, exc: BaseException) -> EngineUnavailable:
        return EngineUnavailable(
            f"Docker engine unreachable at {self._base_url}: {type(exc).__name__}. "
            "Is the daemon running and is the socket readable (DOCKER_HOST)?"
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
                # 404 means "already gone", which callers expect; it is no engine trouble.
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

    async def check_host_paths(self, projects_dir: Path) -> None:
        await verify_projects_dir_on_host(projects_dir)

    async def ping(self) -> None:
        await self._run(lambda: self._api().ping())

    async def engine_version(self) -> str:
        info = await self._run(lambda: self._api().version())
        return str(info.get("Version", "unknown"))

    async def image_exists(self, image: str) -> bool:
        def check() -> bool:
            try:
                self._api().inspect_image(image)  # type: ignore[no-untyped-call]
            except docker.errors.ImageNotFound:
                return False
            return True

        return await self._run(check)

    async def create_and_start(self, spec: ContainerSpec) -> str:
        return await self._run(functools.partial(self._create_and_start, spec))

    def _create_and_start(self, spec: ContainerSpec) -> str:
        api = self._api()
        host_config = api.create_host_config(
            **host_config_arguments(spec, limit_writable_layer=self._writable_layer_limit)
        )
        try:
            created = api.create_container(
                image=spec.image,
                command=list(spec.command),
                entrypoint=list(spec.entrypoint) or None,
                name=spec.name,
                environment=dict(spec.env),
                labels=dict(spec.labels),
                user=spec.user,
                working_dir=spec.working_dir,
                host_config=host_config,
                detach=True,
            )
        except docker.errors.ImageNotFound as exc:
            raise ImageMissing(spec.image) from exc
        except docker.errors.APIError as exc:
            if spec.runtime and "runtime" in str(exc.explanation or exc).lower():
                raise ContainerStartFailed(self._unknown_runtime_text(spec.runtime, exc)) from exc
            raise ContainerStartFailed(_api_error_text("create", exc)) from exc
        container_id = str(created["Id"])
        try:
            api.start(container_id)
        except BaseException as exc:
            # Never leave a created-but-not-started container behind.
            with contextlib.suppress(Exception):
                api.remove_container(container_id, force=True)
            if isinstance(exc, docker.errors.APIError):
                raise ContainerStartFailed(_api_error_text("start", exc)) from exc
            raise
        return container_id

    def _unknown_runtime_text(self, runtime: str, exc: docker.errors.APIError) -> str:
        known = "?"
        with contextlib.suppress(Exception):
            known = ", ".join(sorted((self._api().info().get("Runtimes") or {}).keys()))
        return (
            f"WORKER_RUNTIME={runtime} is not a runtime this Docker engine knows (its runtimes: "
            f"{known}; see `docker info`): install and register it with the engine, or unset "
            f"WORKER_RUNTIME. {_api_error_text('create', exc)}"
        )

    async def capabilities(self, probe_image: str | None = None) -> EngineCapabilities:
        """From ``docker info``; a writable-layer limit the storage driver may support is tried
        out by creating (never starting) a container of ``probe_image`` with it."""
        info = await self._run(lambda: self._api().info())
        runtimes = info.get("Runtimes")
        caps = EngineCapabilities(
            cpus=int(info["NCPU"]) if isinstance(info.get("NCPU"), int) else None,
            cpu_quota=bool(info["CpuCfsQuota"]) if "CpuCfsQuota" in info else None,
            runtimes=frozenset(runtimes) if isinstance(runtimes, dict) else None,
            storage_driver=str(info.get("Driver", "")),
        )
        if writable_layer_limit_possible(info) and probe_image:
            limited = await self._run(functools.partial(self._probe_layer_limit, probe_image))
            caps = dataclasses.replace(caps, writable_layer_limit=limited)
        self._writable_layer_limit = caps.writable_layer_limit
        return caps

    def _probe_layer_limit(self, image: str) -> bool:
        # overlay2 needs xfs mounted with pquota, which docker info does not show: only the
        # engine's answer to a create tells.
        api = self._api()
        try:
            created = api.create_container(
                image=image,
                command=["true"],
                host_config=api.create_host_config(storage_opt={"size": "64m"}),
                labels={"ironclaw.probe": "storage-size"},
            )
        except docker.errors.ImageNotFound:
            log.info("writable layer size limit not tried: no image to try it with", image=image)
            return False
        except docker.errors.APIError as exc:
            reason = _api_error_text("create", exc)
            log.info("writable layer size limit not supported", reason=reason)
            return False
        with contextlib.suppress(docker.errors.APIError):
            api.remove_container(created["Id"], force=True)
        return True

    async def update_memory(self, container_id: str, memory_bytes: int, swap_bytes: int) -> None:
        def update() -> None:
            try:
                self._api().update_container(
                    container_id, mem_limit=memory_bytes, memswap_limit=swap_bytes
                )
            except docker.errors.APIError as exc:
                raise ContainerStartFailed(_api_error_text("update", exc)) from exc

        await self._run(update)

    async def image_id(self, image: str) -> str | None:
        def image_id() -> str | None:
            try:
                data = self._api().inspect_image(image)  # type: ignore[no-untyped-call]
            except docker.errors.ImageNotFound:
                return None
            return str(data.get("Id") or "") or None

        return await self._run(image_id)

    async def stop(self, container_id: str, grace_seconds: int) -> None:
        def stop() -> None:
            with contextlib.suppress(docker.errors.NotFound):
                self._api().stop(container_id, timeout=grace_seconds)

        await self._run(stop)

    async def remove(self, container_id: str) -> None:
        def remove() -> None:
            try:
                self._api().remove_container(container_id, force=True)
            except docker.errors.NotFound:
                pass
            except docker.errors.APIError as exc:
                # 409: removal already in progress; it will be gone shortly.
                if exc.status_code != 409:
                    raise

        await self._run(remove)

    async def inspect(self, container_id: str) -> ContainerInfo | None:
        def inspect() -> ContainerInfo | None:
            try:
                data = self._api().inspect_container(container_id)
            except docker.errors.NotFound:
                return None
            return _info_from_inspect(data)

        return await self._run(inspect)

    async def list_managed(self, instance: str) -> list[ContainerInfo]:
        def list_all() -> list[ContainerInfo]:
            rows = self._api().containers(
                all=True, filters={"label": f"{LABEL_INSTANCE}={instance}"}
            )
            return [
                ContainerInfo(
                    container_id=row["Id"],
                    name=(row.get("Names") or ["?"])[0].lstrip("/"),
                    labels=row.get("Labels") or {},
                    running=row.get("State") == "running",
                    status=str(row.get("State", "")),
                )
                for row in rows
            ]

        return await self._run(list_all)

    async def logs_tail(self, container_id: str, lines: int) -> str:
        def tail() -> str:
            try:
                raw = self._api().logs(container_id, stdout=True, stderr=True, tail=lines)
            except docker.errors.NotFound:
                return ""
            return raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw)

        if lines <= 0:
            return ""
        return await self._run(tail)

    async def stream_logs(
        self, container_id: str, follow: bool, tail_lines: int
    ) -> AsyncIterator[bytes]:
        def open_stream() -> Iterator[bytes]:
            return iter(
                self._api().logs(
                    container_id,
                    stdout=True,
                    stderr=True,
                    stream=True,
                    follow=follow,
                    tail=tail_lines if tail_lines > 0 else "all",
                )
            )

        try:
            stream = await self._run(open_stream)
        except docker.errors.NotFound:
            return
        async for chunk in _iterate_in_thread(stream, self._executor):
            yield chunk

    async def exits(self, instance: str) -> AsyncIterator[ContainerExit]:
        queue: asyncio.Queue[ContainerExit] = asyncio.Queue()
        loop = asyncio.get_running_loop()
        stop = threading.Event()
        holder: dict[str, Any] = {}

        oom_seen: set[str] = set()

        def pump() -> None:
            since: int | None = None
            while not stop.is_set():
                try:
                    stream = self._api().events(
                        decode=True,
                        since=since,
                        filters={
                            "type": "container",
                            # "oom" comes just before "die"; the inspected OOMKilled flag can
                            # lag behind it, so both are used.
                            "event": ["oom", "die"],
                            "label": [f"{LABEL_INSTANCE}={instance}"],
                        },
                    )
                    holder["stream"] = stream
                    for event in stream:
                        if stop.is_set():
                            break
                        since = int(event.get("time", time.time()))
                        if event.get("status", event.get("Action")) == "oom":
                            oom_seen.add(str((event.get("Actor") or {}).get("ID", "")))
                            continue
                        exit_event = self._exit_from_event(event, oom_seen)
                        if exit_event is not None:
                            loop.call_soon_threadsafe(queue.put_nowait, exit_event)
                except Exception as exc:  # the stream broke: re-subscribe after a pause
                    if stop.is_set():
                        break
                    log.warning("docker events stream broke; re-subscribing", error=str(exc))
                    stop.wait(1.0)

        thread = threading.Thread(target=pump, name="docker-events", daemon=True)
        thread.start()
        try:
            while True:
                yield await queue.get()
        finally:
            stop.set()
            stream = holder.get("stream")
            if stream is not None:
                with contextlib.suppress(Exception):
                    stream.close()

    def _exit_from_event(self, event: dict[str, Any], oom_seen: set[str]) -> ContainerExit | None:
        actor = event.get("Actor") or {}
        attrs = actor.get("Attributes") or {}
        job_id = attrs.get(LABEL_JOB_ID) or ""
        slot_id = attrs.get(LABEL_WARM_SLOT) or ""
        container_id = actor.get("ID") or event.get("id")
        if not (job_id or slot_id) or not container_id:
            return None
        raw_code = attrs.get("exitCode")
        exit_code = int(raw_code) if raw_code is not None and str(raw_code).isdigit() else None
        oom = container_id in oom_seen
        oom_seen.discard(container_id)
        try:
            state = self._api().inspect_container(container_id).get("State") or {}
            oom = oom or bool(state.get("OOMKilled"))
        except Exception:  # gone already: the exit code is all we know
            log.debug("container gone before inspect", container_id=container_id)
        return ContainerExit(
            container_id=container_id,
            job_id=job_id,
            exit_code=exit_code,
            oom_killed=oom,
            slot_id=slot_id,
        )

    async def mounted_directory(
        self, container_id: str, container_path: str
    ) -> DirectoryIdentity | None:
        return await self._run(
            functools.partial(self._mounted_directory, container_id, container_path)
        )

    def _mounted_directory(
        self, container_id: str, container_path: str
    ) -> DirectoryIdentity | None:
        # From the host when this process can look into the container's process (root on the
        # host: about a millisecond, mostly the inspect), else by running `stat` in the
        # container (an exec: tens of milliseconds).
        state = self._running_state(container_id)
        if state is None:
            return None
        seen = identity_through_proc(int(state.get("Pid") or 0), container_id, container_path)
        if seen is not None:
            return seen
        return self._identity_through_exec(container_id, container_path)

    def _running_state(self, container_id: str) -> dict[str, Any] | None:
        try:
            state: dict[str, Any] = self._api().inspect_container(container_id).get("State") or {}
        except docker.errors.NotFound:
            return None
        return state if state.get("Running") else None

    def _identity_through_exec(
        self, container_id: str, container_path: str
    ) -> DirectoryIdentity | None:
        api = self._api()
        command = " ".join((*STAT_COMMAND, container_path))
        try:
            exec_id = api.exec_create(
                container_id, [*STAT_COMMAND, container_path], stdout=True, stderr=True
            )["Id"]
            stdout, stderr = api.exec_start(exec_id, demux=True)
            exit_code = api.exec_inspect(exec_id).get("ExitCode")
        except docker.errors.APIError as exc:
            if self._running_state(container_id) is None:
                return None  # it stopped meanwhile: it runs nothing that could use the mount
            raise ContainerStartFailed(
                f"the job's workspace could not be verified: {_api_error_text('exec', exc)}"
            ) from exc
        output = (stdout or b"").decode("utf-8", "replace")
        seen = parse_stat_output(output) if exit_code == 0 else None
        if seen is None:
            if self._running_state(container_id) is None:
                return None
            detail = ((stderr or b"") + (stdout or b"")).decode("utf-8", "replace").strip()
            raise ContainerStartFailed(
                f"the job's workspace could not be verified: `{command}` in the container "
                f"exited with {exit_code}: {detail[:200]} (the image needs a `stat` command)"
            )
        return seen

    async def default_gateway(self) -> str | None:
        def gateway() -> str | None:
            network = self._api().inspect_network("bridge")
            for config in (network.get("IPAM") or {}).get("Config") or []:
                if config.get("Gateway"):
                    return str(config["Gateway"])
                subnet = config.get("Subnet")
                if subnet and ":" not in subnet:
                    # Engines that do not report the gateway use the subnet's first address.
                    return str(next(ipaddress.ip_network(subnet, strict=False).hosts()))
            return None

        return await self._run(gateway)

    async def create_job_network(self, request: JobNetworkRequest) -> str:
        return await self._run(
            functools.partial(docker_network.create_job_network, self._api(), request)
        )

    async def remove_job_network(self, instance: str, job_id: str) -> None:
        await self._run(
            functools.partial(docker_network.remove_job_network, self._api(), instance, job_id)
        )

    async def list_job_networks(self, instance: str) -> list[str]:
        return await self._run(
            functools.partial(docker_network.list_job_networks, self._api(), instance)
        )

    async def close(self) -> None:
        client = self._client
        self._client = None
        if client is not None:
            with contextlib.suppress(Exception):
                client.close()
        self._executor.shutdown(wait=False, cancel_futures=True)


def writable_layer_limit_possible(info: dict[str, Any]) -> bool:
    """Whether ``docker info``'s storage driver can bound a container's writable layer
    (``--storage-opt size=``): overlay2 (and vfs) on xfs, if mounted with ``pquota``; btrfs,
    zfs and devicemapper. fuse-overlayfs, overlay2 on ext4 and the others cannot."""
    driver = str(info.get("Driver", ""))
    status = {
        str(row[0]): str(row[1])
        for row in info.get("DriverStatus") or []
        if isinstance(row, list | tuple) and len(row) == 2
    }
    if driver in ("overlay2", "vfs"):
        return status.get("Backing Filesystem") == "xfs"
    return driver in ("btrfs", "zfs", "devicemapper", "windowsfilter")


def host_config_arguments(
    spec: ContainerSpec, *, limit_writable_layer: bool = False
) -> dict[str, Any]:
    """The engine's HostConfig for a spec (the keyword arguments of ``create_host_config``);
    ``limit_writable_layer`` where the storage driver accepts a size (an engine whose driver
    cannot refuses every create that asks)."""
    if spec.scratch_workspace is not None:
        # This backend binds host paths (the project directory): a spec built for one that
        # does not would run with no /workspace at all.
        raise ValueError("the Docker backend binds the project directory: no scratch workspace")
    layer = spec.writable_layer_bytes if limit_writable_layer else None
    return dict(
        binds={
            m.host_path: {"bind": m.container_path, "mode": "ro" if m.read_only else "rw"}
            for m in spec.mounts
        },
        mem_limit=spec.memory_bytes,
        memswap_limit=spec.memory_swap_bytes,
        cpu_shares=spec.cpu_shares,
        pids_limit=spec.pids_limit,
        tmpfs=dict(spec.tmpfs),
        cap_drop=list(spec.cap_drop),
        cap_add=list(spec.cap_add),
        security_opt=list(spec.security_opt),
        network_mode=spec.network,
        extra_hosts=dict(spec.extra_hosts) or None,
        runtime=spec.runtime,
        nano_cpus=spec.nano_cpus or None,
        read_only=spec.read_only_rootfs,
        storage_opt={"size": str(layer)} if layer else None,
        # No docker-init: it would be PID 1 holding the token in a /proc/1/environ that the
        # agent's tools (same uid) can read. The agent is PID 1, reaps orphans and is
        # non-dumpable.
    )


async def _iterate_in_thread(
    source: Iterator[bytes], executor: ThreadPoolExecutor
) -> AsyncIterator[bytes]:
    loop = asyncio.get_running_loop()
    sentinel = object()

    def step() -> Any:
        try:
            return next(source)
        except StopIteration:
            return sentinel

    try:
        while True:
            item = await loop.run_in_executor(executor, step)
            if item is sentinel:
                return
            yield item
    finally:
        close = getattr(source, "close", None)
        if close is not None:
            with contextlib.suppress(Exception):
                close()


def _info_from_inspect(data: dict[str, Any]) -> ContainerInfo:
    state = data.get("State") or {}
    started = state.get("StartedAt")
    started_at = None
    if started and not started.startswith("0001"):
        with contextlib.suppress(ValueError):
            started_at = datetime.fromisoformat(started[:26].rstrip("Z") + "+00:00")
    return ContainerInfo(
        container_id=data["Id"],
        name=str(data.get("Name", "")).lstrip("/"),
        labels=(data.get("Config") or {}).get("Labels") or {},
        running=bool(state.get("Running")),
        exit_code=state.get("ExitCode"),
        oom_killed=bool(state.get("OOMKilled")),
        started_at=started_at,
        status=str(state.get("Status", "")),
    )


def _api_error_text(action: str, exc: docker.errors.APIError) -> str:
    explanation = exc.explanation or str(exc)
    if isinstance(explanation, bytes):
        explanation = explanation.decode("utf-8", "replace")
    return f"docker {action} failed ({exc.status_code}): {explanation}"
