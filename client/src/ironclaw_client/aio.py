"""``AsyncClient``: the control plane from asyncio, with the same calls and guarantees as
``Client``."""

from __future__ import annotations

import asyncio
import os
import tempfile
import time
from collections.abc import AsyncIterator, Iterable, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

import grpc
from grpc import aio

from ironclaw_client import _convert, _health, _workspace
from ironclaw_client._retry import Backoff, is_transient
from ironclaw_client.api.v1 import jobs_pb2 as pb
from ironclaw_client.api.v1 import jobs_pb2_grpc as pb_grpc
from ironclaw_client.client import (
    DEFAULT_CALL_TIMEOUT,
    DEFAULT_CREATE_TIMEOUT,
    DEFAULT_RECONNECT_TIMEOUT,
    DEFAULT_TRANSFER_TIMEOUT,
    new_job_id,
)
from ironclaw_client.config import ClientConfig
from ironclaw_client.errors import AlreadyExists, NotFound, Timeout, Unavailable, from_rpc_error
from ironclaw_client.types import (
    CreatedJob,
    CredentialGrant,
    GitWorkspace,
    Job,
    JobLimits,
    JobMode,
    JobResult,
    JobState,
    JobUpdate,
    ResultUpdate,
    Snapshot,
    UploadedWorkspace,
)


class AsyncClient:
    """An asyncio client of the orchestrator's control plane (see :class:`Client`).

    Address, admin token and TLS come from the arguments, else from the environment the
    ``ironclaw`` CLI reads (see :class:`ClientConfig`). ``reconnect_timeout`` bounds how long
    one outage (the orchestrator restarting) is ridden out by retries and by ``watch`` before
    :class:`Unavailable` is raised. Use it as an async context manager, or await ``close()``.
    """

    def __init__(
        self,
        target: str | None = None,
        *,
        admin_token: str | None = None,
        tls: bool | None = None,
        ca_file: str | os.PathLike[str] | None = None,
        tls_server_name: str | None = None,
        config: ClientConfig | None = None,
        reconnect_timeout: float = DEFAULT_RECONNECT_TIMEOUT,
    ) -> None:
        self.config = config or ClientConfig.resolve(
            target,
            admin_token=admin_token,
            tls=tls,
            ca_file=ca_file,
            tls_server_name=tls_server_name,
        )
        self.reconnect_timeout = reconnect_timeout
        self._channel = _open_channel(self.config)
        self._stub = pb_grpc.JobServiceStub(self._channel)

    def __repr__(self) -> str:
        return f"AsyncClient({self.config!r})"

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        await self._channel.close(grace=None)

    # ---- calls ----------------------------------------------------------------------------

    async def _unary(self, method: Any, request: Any, timeout: float, retry: bool) -> Any:
        """One call; UNAVAILABLE is retried (for calls safe to repeat) until the outage
        outlasts ``reconnect_timeout``."""
        backoff = Backoff(self.reconnect_timeout)
        while True:
            try:
                return await method(request, timeout=timeout, metadata=self.config.metadata)
            except grpc.RpcError as exc:
                delay = backoff.next_delay() if retry and is_transient(exc) else None
                if delay is None:
                    raise from_rpc_error(exc) from exc
            await asyncio.sleep(delay)

    async def create_job(
        self,
        task: str,
        *,
        job_id: str | None = None,
        project_dir: str = "",
        mode: JobMode = JobMode.WORKER,
        credentials: Iterable[CredentialGrant] = (),
        limits: JobLimits | None = None,
        labels: Mapping[str, str] | None = None,
        wait_for_prompts: bool = False,
        mcp_servers: Iterable[str] = (),
        wasm_tools: Iterable[str] = (),
        git: GitWorkspace | None = None,
        node_labels: Mapping[str, str] | None = None,
        agent: str = "",
        timeout: float = DEFAULT_CREATE_TIMEOUT,
    ) -> CreatedJob:
        """Creates a job and starts its container.

        The job id is chosen here (a new UUID unless ``job_id`` is given), so a call that failed
        with UNAVAILABLE or ran out of ``timeout`` is retried with the same id: the orchestrator
        answers a repeated id with the job it already made, never a second one. The retries
        last at most ``reconnect_timeout``. ``node_labels``: on a Swarm, only a node carrying
        these labels runs the job (``CreateJob.placement``).
        """
        chosen = job_id or new_job_id()
        request = _convert.create_request(
            task=task,
            job_id=chosen,
            project_dir=project_dir,
            mode=mode,
            credentials=credentials,
            limits=limits,
            labels=labels,
            wait_for_prompts=wait_for_prompts,
            mcp_servers=mcp_servers,
            wasm_tools=wasm_tools,
            git=git,
            node_labels=node_labels,
            agent=agent,
        )
        backoff = Backoff(self.reconnect_timeout)
        retried = False
        while True:
            try:
                response = await self._stub.CreateJob(
                    request, timeout=timeout, metadata=self.config.metadata
                )
            except grpc.RpcError as exc:
                code = exc.code()
                if retried and code is grpc.StatusCode.ALREADY_EXISTS:
                    # An earlier attempt of this very call made the job.
                    try:
                        return CreatedJob(await self.get_job(chosen), already_existed=False)
                    except NotFound:
                        raise AlreadyExists(exc.details() or "") from exc
                resumable = is_transient(exc) or code is grpc.StatusCode.DEADLINE_EXCEEDED
                delay = backoff.next_delay() if resumable else None
                if delay is None:
                    raise from_rpc_error(exc) from exc
                retried = True
                await asyncio.sleep(delay)
                continue
            return CreatedJob(
                _convert.job_from_pb(response.job),
                already_existed=response.already_existed and not retried,
            )

    async def get_job(self, job_id: str, *, timeout: float = DEFAULT_CALL_TIMEOUT) -> Job:
        response = await self._unary(
            self._stub.GetJob, pb.GetJobRequest(job_id=job_id), timeout, retry=True
        )
        return _convert.job_from_pb(response.job)

    async def list_jobs(
        self,
        *,
        states: Iterable[JobState] = (),
        page_size: int = 100,
        timeout: float = DEFAULT_CALL_TIMEOUT,
    ) -> AsyncIterator[Job]:
        """Every job (of these states, oldest first), fetched a page at a time as the iterator
        is consumed."""
        wanted = tuple(states)
        token = ""
        while True:
            request = _convert.list_request(wanted, page_size, token)
            page = await self._unary(self._stub.ListJobs, request, timeout, retry=True)
            for job in page.jobs:
                yield _convert.job_from_pb(job)
            token = page.next_page_token
            if not token:
                return

    async def stop_job(self, job_id: str, *, timeout: float = DEFAULT_CREATE_TIMEOUT) -> Job:
        """Stops the job's container (with a grace period) and returns the ended job."""
        response = await self._unary(
            self._stub.StopJob, pb.StopJobRequest(job_id=job_id), timeout, retry=False
        )
        return _convert.job_from_pb(response.job)

    async def cleanup_job(self, job_id: str, *, timeout: float = DEFAULT_CALL_TIMEOUT) -> None:
        """Forgets an ended job from the orchestrator's memory (never from its history)."""
        await self._unary(
            self._stub.CleanupJob, pb.CleanupJobRequest(job_id=job_id), timeout, retry=False
        )

    async def send_prompt(
        self,
        job_id: str,
        content: str = "",
        *,
        done: bool = False,
        timeout: float = DEFAULT_CALL_TIMEOUT,
    ) -> None:
        """Queues a follow-up prompt for the job's agent, or with ``done`` lets it finish.
        Never retried: a prompt that got through once must not be queued twice."""
        request = pb.SendPromptRequest(job_id=job_id, content=content, done=done)
        await self._unary(self._stub.SendPrompt, request, timeout, retry=False)

    async def logs(
        self, job_id: str, *, follow: bool = False, tail_lines: int = 0
    ) -> AsyncIterator[bytes]:
        """The container's log as it comes; with ``follow``, until the container ends."""
        request = pb.StreamLogsRequest(job_id=job_id, follow=follow, tail_lines=tail_lines)
        try:
            async for chunk in self._stub.StreamLogs(request, metadata=self.config.metadata):
                yield chunk.data
        except grpc.RpcError as exc:
            raise from_rpc_error(exc) from exc

    async def upload_workspace(
        self, source: str | os.PathLike[str], *, timeout: float = DEFAULT_TRANSFER_TIMEOUT
    ) -> UploadedWorkspace:
        """See :meth:`Client.upload_workspace`; packing and reading run in a thread."""
        archive, fmt = await asyncio.to_thread(_workspace.open_source, source)

        async def requests() -> AsyncIterator[pb.UploadWorkspaceRequest]:
            yield pb.UploadWorkspaceRequest(metadata=pb.UploadWorkspaceMetadata(format=fmt))
            while chunk := await asyncio.to_thread(archive.read, _workspace.CHUNK_BYTES):
                yield pb.UploadWorkspaceRequest(chunk=chunk)

        try:
            response = await self._stub.UploadWorkspace(
                requests(), timeout=timeout, metadata=self.config.metadata
            )
        except grpc.RpcError as exc:
            raise from_rpc_error(exc) from exc
        finally:
            archive.close()
        return UploadedWorkspace(
            workspace_id=response.workspace_id,
            project_dir=response.project_dir,
            unpacked_bytes=response.unpacked_bytes,
            entries=response.entries,
        )

    async def download_workspace_chunks(
        self, job_id: str, *, timeout: float = DEFAULT_TRANSFER_TIMEOUT
    ) -> AsyncIterator[bytes]:
        """The job's project as a .tar.gz, chunk by chunk (links in it are links)."""
        request = pb.DownloadWorkspaceRequest(job_id=job_id)
        try:
            async for chunk in self._stub.DownloadWorkspace(
                request, timeout=timeout, metadata=self.config.metadata
            ):
                yield chunk.data
        except grpc.RpcError as exc:
            raise from_rpc_error(exc) from exc

    async def download_workspace(
        self,
        job_id: str,
        destination: str | os.PathLike[str],
        *,
        timeout: float = DEFAULT_TRANSFER_TIMEOUT,
    ) -> Path:
        """See :meth:`Client.download_workspace`: received whole into a temporary file, then
        written (or unpacked) in a thread."""
        with tempfile.TemporaryFile() as scratch:
            async for chunk in self.download_workspace_chunks(job_id, timeout=timeout):
                await asyncio.to_thread(scratch.write, chunk)
            return await asyncio.to_thread(_workspace.save_spooled, scratch, Path(destination))

    async def health(self, *, timeout: float = 10.0) -> str:
        """The standard health check: ``SERVING``, ``NOT_SERVING``, ... (needs no token)."""
        check = self._channel.unary_unary(
            _health.HEALTH_CHECK,
            request_serializer=_health.encode_request,
            response_deserializer=_health.decode_response,
        )
        return str(await self._unary(check, "", timeout, retry=False))

    # ---- following a job ------------------------------------------------------------------

    async def watch(
        self, job_id: str, *, after_sequence: int = 0, from_start: bool = False
    ) -> AsyncIterator[JobUpdate]:
        """The job's updates in order, each exactly once, ending after its result.

        The stream opens with a :class:`Snapshot` (or, with ``from_start``, replays the job's
        history; with ``after_sequence``, starts after that one). When the connection drops
        (UNAVAILABLE: the orchestrator restarting, a network cut), it reconnects with the last
        sequence it delivered and resumes exactly there, for up to ``reconnect_timeout`` per
        outage; an update already delivered is never delivered again.
        """
        async for update in self._watch(job_id, after_sequence, from_start, deadline=None):
            yield update

    async def _watch(
        self, job_id: str, after: int, from_start: bool, deadline: float | None
    ) -> AsyncIterator[JobUpdate]:
        last = after
        backoff = Backoff(self.reconnect_timeout)
        while True:
            request = pb.WatchJobRequest(
                job_id=job_id, after_sequence=last, from_start=from_start and last == 0
            )
            timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
            try:
                async for item in self._stub.WatchJob(
                    request, timeout=timeout, metadata=self.config.metadata
                ):
                    backoff.reset()
                    if last and item.sequence <= last:
                        continue  # already delivered before the reconnect
                    last = item.sequence
                    update = _convert.update_from_pb(item)
                    if update is not None:
                        yield update
                    if isinstance(update, ResultUpdate):
                        return
                    if isinstance(update, Snapshot) and update.job.is_terminal:
                        return  # an ended job's stream is its snapshot alone
            except grpc.RpcError as exc:
                if deadline is not None and exc.code() is grpc.StatusCode.DEADLINE_EXCEEDED:
                    raise Timeout(f"job {job_id} did not end in time") from exc
                delay = backoff.next_delay() if is_transient(exc) else None
                if delay is None:
                    raise from_rpc_error(exc) from exc
                await asyncio.sleep(delay)
                continue
            # The stream ended before the result: the server shut down, or the job had ended
            # with nothing after ``last``.
            if (await self.get_job(job_id)).is_terminal:
                return
            delay = backoff.next_delay()
            if delay is None:
                raise Unavailable(f"the watch of job {job_id} kept ending before its result")
            await asyncio.sleep(delay)

    async def wait(self, job_id: str, timeout: float | None = None) -> JobResult:
        """Waits until the job ends and returns its result; raises :class:`Timeout` after
        ``timeout`` seconds (None: no limit). Rides out orchestrator restarts like ``watch``."""
        deadline = None if timeout is None else time.monotonic() + timeout
        async for update in self._watch(job_id, 0, False, deadline):
            if isinstance(update, ResultUpdate):
                return update.result
            if isinstance(update, Snapshot) and update.job.result is not None:
                return update.job.result
        # A terminal snapshot without a result: ask for the job itself.
        job = await self.get_job(job_id)
        if job.result is None:
            raise Unavailable(f"job {job_id} ended without a result")
        return job.result


def _open_channel(config: ClientConfig) -> aio.Channel:
    options = config.channel_options()
    if config.tls:
        credentials = grpc.ssl_channel_credentials(root_certificates=config.root_certificates)
        return aio.secure_channel(config.target, credentials, options=options)
    return aio.insecure_channel(config.target, options=options)
