"""The gRPC JobService: a thin door that converts protobuf ⇄ domain and maps errors."""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import datetime
from typing import Any, TypeVar

import grpc
from grpc import aio

from ironclaw_client.api.v1 import jobs_pb2 as pb
from ironclaw_client.api.v1 import jobs_pb2_grpc as pb_grpc
from orchestrator.domain.jobs import JobSnapshot, JobUpdate
from orchestrator.errors import InvalidArgument, OrchestratorError
from orchestrator.grpc_api import convert
from orchestrator.jobs.manager import ContainerJobManager
from orchestrator.log_context import bind_request
from orchestrator.logging import get_logger

log = get_logger(__name__)
_UPDATE_CACHE_SIZE = 4096
T = TypeVar("T")

Context = aio.ServicerContext[Any, Any]


async def abort_for(context: Context, exc: OrchestratorError) -> None:
    """Ends the RPC with the status of the error's kind and its human message."""
    await context.abort(grpc.StatusCode[exc.kind.value.grpc_status], exc.message)


class JobServicer(pb_grpc.JobServiceServicer):
    """Implements ironclaw.orchestrator.v1.JobService on top of the job manager."""

    def __init__(self, manager: ContainerJobManager) -> None:
        self._manager = manager
        # Creations whose caller went away (deadline, disconnect): kept until they finish.
        self._creations: set[asyncio.Task[Any]] = set()
        self._update_cache: OrderedDict[tuple[str, int, datetime], pb.JobUpdate] = OrderedDict()

    async def _call(self, context: Context, fn: Callable[[], Awaitable[T]], job_id: str = "") -> T:
        # Each RPC runs in its own task: what is bound here stays with this RPC's log lines.
        bind_request(context.invocation_metadata(), job_id)
        try:
            return await fn()
        except OrchestratorError as exc:
            await abort_for(context, exc)
            raise AssertionError("unreachable") from exc

    async def CreateJob(
        self, request: pb.CreateJobRequest, context: Context
    ) -> pb.CreateJobResponse:
        async def run() -> pb.CreateJobResponse:
            creation = asyncio.ensure_future(
                self._manager.create_job(convert.create_request_from_pb(request))
            )
            self._creations.add(creation)
            creation.add_done_callback(self._creation_done)
            # A caller whose deadline passes mid-start must not cancel the start halfway: the
            # job would stay Creating with no container. It finishes, and the caller's retry
            # with the same job_id finds it.
            created = await asyncio.shield(creation)
            # The token never leaves through the control plane.
            return pb.CreateJobResponse(
                job=convert.job_to_pb(created.job), already_existed=created.already_existed
            )

        return await self._call(context, run)

    def _creation_done(self, creation: asyncio.Task[Any]) -> None:
        self._creations.discard(creation)
        if not creation.cancelled() and creation.exception() is not None:
            # Its caller (if still there) got the error; one that left hears it on retry.
            log.debug("a job creation ended with an error", error=str(creation.exception()))

    async def GetJob(self, request: pb.GetJobRequest, context: Context) -> pb.GetJobResponse:
        async def run() -> pb.GetJobResponse:
            return pb.GetJobResponse(job=convert.job_to_pb(self._manager.get_job(request.job_id)))

        return await self._call(context, run, request.job_id)

    async def ListJobs(self, request: pb.ListJobsRequest, context: Context) -> pb.ListJobsResponse:
        async def run() -> pb.ListJobsResponse:
            page = self._manager.list_jobs(
                convert.states_from_pb(request.states), request.page_size, request.page_token
            )
            return pb.ListJobsResponse(
                jobs=[convert.job_to_pb(job) for job in page.jobs],
                next_page_token=page.next_page_token,
            )

        return await self._call(context, run)

    async def StopJob(self, request: pb.StopJobRequest, context: Context) -> pb.StopJobResponse:
        async def run() -> pb.StopJobResponse:
            return pb.StopJobResponse(
                job=convert.job_to_pb(await self._manager.stop_job(request.job_id))
            )

        return await self._call(context, run, request.job_id)

    async def CleanupJob(
        self, request: pb.CleanupJobRequest, context: Context
    ) -> pb.CleanupJobResponse:
        async def run() -> pb.CleanupJobResponse:
            await self._manager.cleanup_job(request.job_id)
            return pb.CleanupJobResponse()

        return await self._call(context, run, request.job_id)

    async def SendPrompt(
        self, request: pb.SendPromptRequest, context: Context
    ) -> pb.SendPromptResponse:
        async def run() -> pb.SendPromptResponse:
            self._manager.send_prompt(request.job_id, request.content, request.done)
            return pb.SendPromptResponse()

        return await self._call(context, run, request.job_id)

    async def WatchJob(
        self, request: pb.WatchJobRequest, context: Context
    ) -> AsyncIterator[pb.JobUpdate]:
        bind_request(context.invocation_metadata(), request.job_id)
        try:
            async for item in self._manager.watch(
                request.job_id, request.after_sequence, request.from_start
            ):
                yield self._encoded(request.job_id, item)
        except OrchestratorError as exc:
            await abort_for(context, exc)

    def _encoded(self, job_id: str, item: JobSnapshot | JobUpdate) -> pb.JobUpdate:
        # Every watcher of a job streams the same updates: convert each one once, not once per
        # watcher (that conversion was a quarter of the server's time with 100 watchers).
        if isinstance(item, JobSnapshot):
            return convert.update_to_pb(item)
        # The time makes the key unique even if a cleaned-up job id is ever reused.
        key = (job_id, item.sequence, item.time)
        message = self._update_cache.get(key)
        if message is None:
            message = convert.update_to_pb(item)
            self._update_cache[key] = message
            if len(self._update_cache) > _UPDATE_CACHE_SIZE:
                self._update_cache.popitem(last=False)
        return message

    async def StreamLogs(
        self, request: pb.StreamLogsRequest, context: Context
    ) -> AsyncIterator[pb.LogChunk]:
        bind_request(context.invocation_metadata(), request.job_id)
        try:
            job = self._manager.get_job(request.job_id)
            container_id = self._manager.container_id(job.job_id)
            if container_id is None:
                if job.log_tail:
                    yield pb.LogChunk(data=job.log_tail.encode())
                return
            async for chunk in self._manager.backend.stream_logs(
                container_id, request.follow, request.tail_lines
            ):
                yield pb.LogChunk(data=chunk)
        except OrchestratorError as exc:
            await abort_for(context, exc)

    async def UploadWorkspace(
        self, request_iterator: AsyncIterator[pb.UploadWorkspaceRequest], context: Context
    ) -> pb.UploadWorkspaceResponse:
        async def run() -> pb.UploadWorkspaceResponse:
            first = await anext(aiter(request_iterator), None)
            if first is None or first.WhichOneof("item") != "metadata":
                raise InvalidArgument(
                    "UploadWorkspace: the first message must carry the metadata, the "
                    "following ones the archive's chunks"
                )
            compressed = convert.upload_format(first.metadata.format)
            uploaded = await self._manager.upload_workspace(
                _archive_chunks(request_iterator), compressed
            )
            return pb.UploadWorkspaceResponse(
                workspace_id=uploaded.workspace_id,
                project_dir=str(uploaded.project_dir),
                unpacked_bytes=uploaded.unpacked_bytes,
                entries=uploaded.entries,
            )

        return await self._call(context, run)

    async def DownloadWorkspace(
        self, request: pb.DownloadWorkspaceRequest, context: Context
    ) -> AsyncIterator[pb.WorkspaceChunk]:
        bind_request(context.invocation_metadata(), request.job_id)
        try:
            async for chunk in self._manager.download_workspace(request.job_id):
                yield pb.WorkspaceChunk(data=chunk)
        except OrchestratorError as exc:
            await abort_for(context, exc)


async def _archive_chunks(
    requests: AsyncIterator[pb.UploadWorkspaceRequest],
) -> AsyncIterator[bytes]:
    async for message in requests:
        if message.WhichOneof("item") != "chunk":
            raise InvalidArgument("UploadWorkspace: only the first message may carry metadata")
        yield message.chunk
