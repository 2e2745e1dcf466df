"""A container engine in memory, implementing the backend interface for tests of the job
manager, the reconciler and the worker API that need no real engine.

Containers are records: created running, they stay so until a test makes one exit (with an
exit code, or OOM-killed), vanish (gone without an event, as after an engine restart), or the
manager stops it. Every exit is also reported on ``exits()``, as the engine's events would. The
Docker suite remains the proof against the real engine; this is what lets the manager's logic
run in milliseconds.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime

from orchestrator.containers.backend import (
    ContainerBackend,
    ContainerExit,
    ContainerInfo,
    ContainerSpec,
    JobNetworkRequest,
)
from orchestrator.containers.spec import LABEL_INSTANCE, LABEL_JOB_ID, LABEL_WARM_SLOT
from orchestrator.errors import EngineUnavailable, FailedPrecondition

SIGTERM_EXIT_CODE = 143


@dataclass
class FakeContainer:
    container_id: str
    spec: ContainerSpec
    running: bool = True
    status: str = "running"
    exit_code: int | None = None
    oom_killed: bool = False
    log: list[str] = field(default_factory=list)
    started_at: datetime = field(default_factory=lambda: datetime.now(UTC))

    @property
    def job_id(self) -> str:
        return self.spec.labels.get(LABEL_JOB_ID, "")

    def info(self) -> ContainerInfo:
        return ContainerInfo(
            container_id=self.container_id,
            name=self.spec.name,
            labels=dict(self.spec.labels),
            running=self.running,
            exit_code=self.exit_code,
            oom_killed=self.oom_killed,
            started_at=self.started_at,
            status=self.status,
        )


class FakeBackend(ContainerBackend):
    """An in-memory engine; see the module docstring."""

    def __init__(self, *, images: set[str] | None = None, gateway: str = "127.0.0.1") -> None:
        self.containers: dict[str, FakeContainer] = {}
        self.networks: dict[tuple[str, str], JobNetworkRequest] = {}
        # None: every image exists; otherwise only these.
        self.images = images
        self.reachable = True
        self.fail_next_start: str | None = None
        self.created: list[ContainerSpec] = []
        self.removed: list[str] = []
        self.stopped: list[str] = []
        self._gateway = gateway
        # What update_memory was asked: (container id, memory bytes, swap bytes).
        self.memory_updates: list[tuple[str, int, int]] = []
        # The id each image reference names (rebuilding an image: a new id); default "sha256:1".
        self.image_ids: dict[str, str] = {}
        self._ids = itertools.count(1)
        self._exit_queues: dict[str, list[asyncio.Queue[ContainerExit]]] = {}

    # ---- what tests do to containers ------------------------------------------------------

    def container_of(self, job_id: str) -> FakeContainer:
        for container in self.containers.values():
            if container.job_id == job_id:
                return container
        raise KeyError(f"no container for job {job_id}")

    def exit(self, container_id: str, exit_code: int = 0, *, oom_killed: bool = False) -> None:
        """The container's process ends; the exit is reported like the engine's events."""
        container = self.containers[container_id]
        container.running = False
        container.status = "exited"
        container.exit_code = exit_code
        container.oom_killed = oom_killed
        self._report(container)

    def vanish(self, container_id: str) -> None:
        """The container disappears without an event (removed behind the orchestrator's back)."""
        self.containers.pop(container_id, None)

    def write_log(self, container_id: str, *lines: str) -> None:
        self.containers[container_id].log.extend(lines)

    def _report(self, container: FakeContainer) -> None:
        event = ContainerExit(
            container_id=container.container_id,
            job_id=container.job_id,
            exit_code=container.exit_code,
            oom_killed=container.oom_killed,
            slot_id=container.spec.labels.get(LABEL_WARM_SLOT, ""),
        )
        instance = container.spec.labels.get(LABEL_INSTANCE, "")
        for queue in self._exit_queues.get(instance, []):
            queue.put_nowait(event)

    def watching(self, instance: str) -> int:
        """How many ``exits()`` iterators are subscribed for ``instance``."""
        return len(self._exit_queues.get(instance, []))

    def _check(self) -> None:
        if not self.reachable:
            raise EngineUnavailable("fake engine unreachable")

    # ---- the interface --------------------------------------------------------------------

    async def ping(self) -> None:
        self._check()

    async def image_exists(self, image: str) -> bool:
        self._check()
        return self.images is None or image in self.images

    async def create_and_start(self, spec: ContainerSpec) -> str:
        self._check()
        if self.images is not None and spec.image not in self.images:
            raise FailedPrecondition(f"image {spec.image} not found: build it with `make images`")
        if self.fail_next_start is not None:
            message, self.fail_next_start = self.fail_next_start, None
            raise FailedPrecondition(message)
        container_id = f"fake{next(self._ids):08d}"
        self.containers[container_id] = FakeContainer(container_id, spec)
        self.created.append(spec)
        return container_id

    async def update_memory(self, container_id: str, memory_bytes: int, swap_bytes: int) -> None:
        self._check()
        if container_id not in self.containers:
            raise FailedPrecondition(f"no container {container_id}")
        self.memory_updates.append((container_id, memory_bytes, swap_bytes))

    async def image_id(self, image: str) -> str | None:
        self._check()
        return self.image_ids.get(image, "sha256:1")

    async def stop(self, container_id: str, grace_seconds: int) -> None:
        self._check()
        container = self.containers.get(container_id)
        self.stopped.append(container_id)
        if container is not None and container.running:
            container.running = False
            container.status = "exited"
            container.exit_code = SIGTERM_EXIT_CODE
            self._report(container)

    async def remove(self, container_id: str) -> None:
        self._check()
        if self.containers.pop(container_id, None) is not None:
            self.removed.append(container_id)

    async def inspect(self, container_id: str) -> ContainerInfo | None:
        self._check()
        container = self.containers.get(container_id)
        return container.info() if container is not None else None

    async def list_managed(self, instance: str) -> list[ContainerInfo]:
        self._check()
        return [
            container.info()
            for container in self.containers.values()
            if container.spec.labels.get(LABEL_INSTANCE) == instance
        ]

    async def logs_tail(self, container_id: str, lines: int) -> str:
        container = self.containers.get(container_id)
        if container is None or lines <= 0:
            return ""
        return "".join(f"{line}\n" for line in container.log[-lines:])

    async def stream_logs(
        self, container_id: str, follow: bool, tail_lines: int
    ) -> AsyncIterator[bytes]:
        container = self.containers.get(container_id)
        if container is None:
            return
        start = max(0, len(container.log) - tail_lines) if tail_lines > 0 else 0
        for line in container.log[start:]:
            yield f"{line}\n".encode()

    async def exits(self, instance: str) -> AsyncIterator[ContainerExit]:
        queue: asyncio.Queue[ContainerExit] = asyncio.Queue()
        self._exit_queues.setdefault(instance, []).append(queue)
        try:
            while True:
                yield await queue.get()
        finally:
            self._exit_queues[instance].remove(queue)

    async def default_gateway(self) -> str | None:
        return self._gateway

    async def create_job_network(self, request: JobNetworkRequest) -> str:
        self._check()
        self.networks[(request.instance, request.job_id)] = request
        return f"fake-job-{request.job_id}"

    async def remove_job_network(self, instance: str, job_id: str) -> None:
        self.networks.pop((instance, job_id), None)

    async def list_job_networks(self, instance: str) -> list[str]:
        return sorted(job_id for owner, job_id in self.networks if owner == instance)

    async def close(self) -> None:
        return None
