"""``Client``: the control plane, synchronously."""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

import grpc

from ironclaw_client import _convert, _health, _workspace
from ironclaw_client._retry import Backoff, is_transient
from ironclaw_client.api.v1 import jobs_pb2 as pb
from ironclaw_client.api.v1 import jobs_pb2_grpc as pb_grpc
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

DEFAULT_RECONNECT_TIMEOUT = 60.0
DEFAULT_CALL_TIMEOUT = 30.0
DEFAULT_CREATE_TIMEOUT = 120.0
DEFAULT_TRANSFER_TIMEOUT = 600.0


def new_job_id() -> str:
    """A client-chosen job id: what makes ``create_job`` safe to retry."""
    return str(uuid.uuid4())


class Client:
    """A synchronous client of the orchestrator's control plane.

    Address, admin token and TLS come from the arguments, else from the environment the
    ``ironclaw`` CLI reads (see :class:`ClientConfig`). ``reconnect_timeout`` bounds how long
    one outage (the orchestrator restarting) is ridden out by retries and by ``watch`` before
    :class:`Unavailable` is raised. Use it as a context manager, or call ``close()``.
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
        return f"Client({self.config!r})"

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        self._channel.close()

    # ---- calls ----------------------------------------------------------------------------

    def _unary(self, method: Any, request: Any, timeout: float, retry: bool) -> Any:
        """One call; UNAVAILABLE is retried (for calls safe to repeat) until the outage
        outlasts ``reconnect_timeout``."""
        backoff = Backoff(self.reconnect_timeout)
        while True:
            try:
                return method(request, timeout=timeout, metadata=self.config.metadata)
            except grpc.RpcError as exc:
                delay = backoff.next_delay() if retry and is_transient(exc) else None
                if delay is None:
                    raise from_rpc_error(exc) from exc
            time.sleep(delay)

    def create_job(
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
                response = self._stub.CreateJob(
                    request, timeout=timeout, metadata=self.config.metadata
                )
            except grpc.RpcError as exc:
                code = exc.code()
                if retried and code is grpc.StatusCode.ALREADY_EXISTS:
                    # An earlier attempt of this very call made the job.
                    try:
                        return CreatedJob(self.get_job(chosen), already_existed=False)
                    except NotFound:
                        raise AlreadyExists(exc.details() or "") from exc
                resumable = is_transient(exc) or code is grpc.StatusCode.DEADLINE_EXCEEDED
                delay = backoff.next_delay() if resumable else None
                if delay is None:
                    raise from_rpc_error(exc) from exc
                retried = True
                time.sleep(delay)
                continue
            return CreatedJob(
                _convert.job_from_pb(response.job),
                already_existed=response.already_existed and not retried,
            )

    def get_job(self, job_id: str, *, timeout: float = DEFAULT_CALL_TIMEOUT) -> Job:
        response = self._unary(
            self._stub.GetJob, pb.GetJobRequest(job_id=job_id), timeout, retry=True
        )
        return _convert.job_from_pb(response.job)

    def list_jobs(
        self,
        *,
        states: Iterable[JobState] = (),
        page_size: int = 100,
        timeout: float = DEFAULT_CALL_TIMEOUT,
    ) -> Iterator[Job]:
        """Every job (of these states, oldest first), fetched a page at a time as the iterator
        is consumed."""
        wanted = tuple(states)
        token = ""
        while True:
            request = _convert.list_request(wanted, page_size, token)
            page = self._unary(self._stub.ListJobs, request, timeout, retry=True)
            for job in page.jobs:
                yield _convert.job_from_pb(job)
            token = page.next_page_token
            if not token:
                return

    def stop_job(self, job_id: str, *, timeout: float = DEFAULT_CREATE_TIMEOUT) -> Job:
        """Stops the job's container (with a grace period) and returns the ended job."""
        response = self._unary(
            self._stub.StopJob, pb.StopJobRequest(job_id=job_id), timeout, retry=False
        )
        return _convert.job_from_pb(response.job)

    def cleanup_job(self, job_id: str, *, timeout: float = DEFAULT_CALL_TIMEOUT) -> None:
        """Forgets an ended job from the orchestrator's memory (never from its history)."""
        self._unary(
            self._stub.CleanupJob, pb.CleanupJobRequest(job_id=job_id), timeout, retry=False
        )

    def send_prompt(
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
        self._unary(self._stub.SendPrompt, request, timeout, retry=False)

    def logs(self, job_id: str, *, follow: bool = False, tail_lines: int = 0) -> Iterator[bytes]:
        """The container's log as it comes; with ``follow``, until the container ends."""
        request = pb.StreamLogsRequest(job_id=job_id, follow=follow, tail_lines=tail_lines)
        try:
            for chunk in self._stub.StreamLogs(request, metadata=self.config.metadata):
                yield chunk.data
        except grpc.RpcError as exc:
            raise from_rpc_error(exc) from exc

    def upload_workspace(
        self, source: str | os.PathLike[str], *, timeout: float = DEFAULT_TRANSFER_TIMEOUT
    ) -> UploadedWorkspace:
        """Uploads a directory (packed here as a .tar.gz) or a tar / tar.gz file as a new
        workspace; pass the result's ``project_dir`` to :meth:`create_job`.

        A directory holding links, devices, fifos or setuid/setgid files raises
        :class:`InvalidArgument` before anything is sent (the orchestrator refuses them).
        Never retried: a second attempt would be a second upload.
        """
        archive, fmt = _workspace.open_source(source)
        with archive:
            try:
                response = self._stub.UploadWorkspace(
                    _workspace.upload_requests(archive, fmt),
                    timeout=timeout,
                    metadata=self.config.metadata,
                )
            except grpc.RpcError as exc:
                raise from_rpc_error(exc) from exc
        return UploadedWorkspace(
            workspace_id=response.workspace_id,
            project_dir=response.project_dir,
            unpacked_bytes=response.unpacked_bytes,
            entries=response.entries,
        )

    def download_workspace_chunks(
        self, job_id: str, *, timeout: float = DEFAULT_TRANSFER_TIMEOUT
    ) -> Iterator[bytes]:
        """The job's project as a .tar.gz, chunk by chunk (links in it are links)."""
        request = pb.DownloadWorkspaceRequest(job_id=job_id)
        try:
            for chunk in self._stub.DownloadWorkspace(
                request, timeout=timeout, metadata=self.config.metadata
            ):
                yield chunk.data
        except grpc.RpcError as exc:
            raise from_rpc_error(exc) from exc

    def download_workspace(
        self,
        job_id: str,
        destination: str | os.PathLike[str],
        *,
        timeout: float = DEFAULT_TRANSFER_TIMEOUT,
    ) -> Path:
        """Saves the job's project: as a .tar.gz file at ``destination``, or unpacked into it
        when it is an existing directory. Possible while the job runs and for
        WORKSPACE_RETAIN_S after it ended (later :class:`FailedPrecondition`)."""
        return _workspace.save_archive(
            self.download_workspace_chunks(job_id, timeout=timeout), Path(destination)
        )

    def health(self, *, timeout: float = 10.0) -> str:
        """The standard health check: ``SERVING``, ``NOT_SERVING``, ... (needs no token)."""
        check = self._channel.unary_unary(
            _health.HEALTH_CHECK,
            request_serializer=_health.encode_request,
            response_deserializer=_health.decode_response,
        )
        return str(self._unary(check, "", timeout, retry=False))

    # ---- following a job ------------------------------------------------------------------

    def watch(
        self, job_id: str, *, after_sequence: int = 0, from_start: bool = False
    ) -> Iterator[JobUpdate]:
        """The job's updates in order, each exactly once, ending after its result.

        The stream opens with a :class:`Snapshot` (or, with ``from_start``, replays the job's
        history; with ``after_sequence``, starts after that one). When the connection drops
        (UNAVAILABLE: the orchestrator restarting, a network cut), it reconnects with the last
        sequence it delivered and resumes exactly there, for up to ``reconnect_timeout`` per
        outage; an update already delivered is never delivered again.
        """
        yield from self._watch(job_id, after_sequence, from_start, deadline=None)

    def _watch(
        self, job_id: str, after: int, from_start: bool, deadline: float | None
    ) -> Iterator[JobUpdate]:
        last = after
        backoff = Backoff(self.reconnect_timeout)
        while True:
            request = pb.WatchJobRequest(
                job_id=job_id, after_sequence=last, from_start=from_start and last == 0
            )
            timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
            try:
                for item in self._stub.WatchJob(
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
                time.sleep(delay)
                continue
            # The stream ended before the result: the server shut down, or the job had ended
            # with nothing after ``last``.
            if self.get_job(job_id).is_terminal:
                return
            delay = backoff.next_delay()
            if delay is None:
                raise Unavailable(f"the watch of job {job_id} kept ending before its result")
            time.sleep(delay)

    def wait(self, job_id: str, timeout: float | None = None) -> JobResult:
        """Blocks until the job ends and returns its result; raises :class:`Timeout` after
        ``timeout`` seconds (None: no limit). Rides out orchestrator restarts like ``watch``."""
        deadline = None if timeout is None else time.monotonic() + timeout
        for update in self._watch(job_id, 0, False, deadline):
            if isinstance(update, ResultUpdate):
                return update.result
            if isinstance(update, Snapshot) and update.job.result is not None:
                return update.job.result
        # A terminal snapshot without a result: ask for the job itself.
        job = self.get_job(job_id)
        if job.result is None:
            raise Unavailable(f"job {job_id} ended without a result")
        return job.result


def _open_channel(config: ClientConfig) -> grpc.Channel:
    options = config.channel_options()
    if config.tls:
        credentials = grpc.ssl_channel_credentials(root_certificates=config.root_certificates)
        return grpc.secure_channel(config.target, credentials, options=options)
    return grpc.insecure_channel(config.target, options=options)
