"""The engine becomes unreachable and comes back: clear errors meanwhile, no job judged lost
while nothing can be seen, and deaths during the outage noticed once it returns. The engine
is reached through a socket proxy (DOCKER_HOST) that the test cuts."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path
from typing import Any

import pytest

from orchestrator.containers.docker_backend import DockerBackend
from orchestrator.domain.jobs import CreateJobRequest, JobState, TerminalReason
from orchestrator.errors import EngineUnavailable
from tests.helpers import wait_for

pytestmark = pytest.mark.docker
ENGINE_SOCKET = "/var/run/docker.sock"


class SocketProxy:
    """Forwards a Unix socket to the engine's; ``cut`` drops the listener and every
    connection, ``restore`` listens again on the same path."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._server: asyncio.AbstractServer | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    async def restore(self) -> None:
        self.path.unlink(missing_ok=True)
        self._server = await asyncio.start_unix_server(self._handle, path=str(self.path))

    async def cut(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        for writer in list(self._writers):
            writer.close()
        self._writers.clear()
        self.path.unlink(missing_ok=True)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_unix_connection(ENGINE_SOCKET)
        except OSError:
            writer.close()
            return
        self._writers.update({writer, up_writer})

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(Exception):
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            dst.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))
        self._writers.difference_update({writer, up_writer})


@pytest.fixture
async def proxy(tmp_path: Path) -> Any:
    proxy = SocketProxy(tmp_path / "engine.sock")
    await proxy.restore()
    yield proxy
    await proxy.cut()


async def test_engine_outage_postpones_decisions_and_recovers(
    start_orch: Any,
    make_settings: Any,
    test_agent_image: str,
    proxy: SocketProxy,
    docker_engine: Any,
) -> None:
    backend = DockerBackend(base_url=f"unix://{proxy.path}")
    orch = await start_orch(make_settings(WORKER_IMAGE=test_agent_image), backend=backend)
    manager = orch.manager
    survivor = (await manager.create_job(CreateJobRequest(task="sleep"))).job.job_id
    victim = (await manager.create_job(CreateJobRequest(task="sleep"))).job.job_id
    await wait_for(
        lambda: all(
            manager.get_job(j).status_message == "test agent sleeping" for j in (survivor, victim)
        ),
        what="both agents",
    )

    await proxy.cut()
    with pytest.raises(EngineUnavailable) as info:
        await manager.create_job(CreateJobRequest(task="sleep"))
    assert str(proxy.path) in info.value.message
    # A container dies while the orchestrator cannot see the engine.
    docker_engine.api.kill(f"ironclaw-worker-{victim}")
    # Several reconciliation passes fail meanwhile; nobody is declared lost.
    for _ in range(3):
        with pytest.raises(EngineUnavailable):
            await manager.reconcile_once()
    assert manager.get_job(survivor).state is JobState.RUNNING
    assert manager.get_job(victim).state is JobState.RUNNING

    await proxy.restore()
    victim_job = await wait_for(
        lambda: manager.get_job(victim).state.is_terminal and manager.get_job(victim),
        timeout=15,
        what="the death during the outage to be noticed",
    )
    assert victim_job.result.reason is TerminalReason.EXITED
    assert manager.get_job(survivor).state is JobState.RUNNING
    # The exit stream was re-subscribed: a death after the outage is noticed from its event.
    docker_engine.api.kill(f"ironclaw-worker-{survivor}")
    survivor_job = await wait_for(
        lambda: manager.get_job(survivor).state.is_terminal and manager.get_job(survivor),
        timeout=10,
        what="the later death",
    )
    assert survivor_job.result.reason is TerminalReason.EXITED
    fresh = await manager.create_job(CreateJobRequest(task="sleep"))
    assert fresh.job.state is JobState.RUNNING
