"""A job's project streamed back as a .tar.gz, while the job runs and for a while after.

The packing runs in a thread (``pack.py``) and hands its chunks to the event loop through a
bounded pipe: a slow reader slows the packing down instead of filling memory, and a reader
that goes away stops it at its next chunk.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from concurrent.futures import Executor
from datetime import UTC, datetime

from orchestrator.domain.jobs import JobSnapshot
from orchestrator.errors import Busy, FailedPrecondition, OrchestratorError
from orchestrator.logging import get_logger
from orchestrator.workspaces.pack import PackStats, pack_tree
from orchestrator.workspaces.streams import ChunkPipe, PipeClosed

log = get_logger(__name__)


def check_downloadable(job: JobSnapshot, retain_s: float, now: datetime | None = None) -> None:
    """Raises FailedPrecondition when the job ended more than ``retain_s`` ago."""
    if not job.state.is_terminal or job.finished_at is None:
        return
    now = now or datetime.now(UTC)
    ended_for = (now - job.finished_at).total_seconds()
    if ended_for > retain_s:
        raise FailedPrecondition(
            f"job {job.job_id} ended {ended_for:.0f} s ago: its workspace is kept for "
            f"{retain_s:g} s after the end (WORKSPACE_RETAIN_S)"
        )


class WorkspaceDownloads:
    """Streams project directories as archives, at most ``at_once`` at a time."""

    def __init__(self, executor: Executor, at_once: int) -> None:
        self._executor = executor
        self._at_once = at_once
        self._busy = 0

    @property
    def in_progress(self) -> int:
        """Downloads whose packing thread still runs."""
        return self._busy

    async def stream(self, job_id: str, project_dir: str) -> AsyncIterator[bytes]:
        """The .tar.gz of ``project_dir``, chunk by chunk. Raises Busy when ``at_once``
        downloads are in progress, FailedPrecondition when the directory is gone."""
        if self._busy >= self._at_once:
            raise Busy(
                f"{self._at_once} workspace downloads are in progress "
                "(WORKSPACE_UPLOADS_AT_ONCE): try again when one has finished"
            )
        loop = asyncio.get_running_loop()
        pipe = ChunkPipe(loop)
        self._busy += 1
        work = loop.run_in_executor(self._executor, _pack, project_dir, pipe)
        work.add_done_callback(lambda done: self._packed(job_id, done))
        try:
            while True:
                chunk = await pipe.get()
                if not chunk:
                    return
                yield chunk
        finally:
            pipe.close()  # the reader left (or all is sent): the thread stops at its next chunk

    def _packed(self, job_id: str, done: asyncio.Future[PackStats]) -> None:
        self._busy -= 1
        if done.cancelled():
            return
        error = done.exception()
        if error is None:
            stats = done.result()
            log.info(
                "workspace downloaded",
                job_id=job_id,
                files=stats.files,
                dirs=stats.dirs,
                links=stats.links,
                skipped=stats.skipped,
            )
        elif not isinstance(error, (OrchestratorError, PipeClosed)):
            log.error("packing a workspace failed", job_id=job_id, error=type(error).__name__)


def _pack(project_dir: str, pipe: ChunkPipe) -> PackStats:
    try:
        stats = pack_tree(project_dir, pipe.put_blocking)
    except PipeClosed:
        raise
    except OrchestratorError as exc:
        pipe.end(exc)
        raise
    except OSError as exc:
        error = FailedPrecondition(f"the workspace could not be read: {exc.strerror}")
        pipe.end(error)
        raise error from None
    except BaseException as exc:
        pipe.end(FailedPrecondition("the workspace could not be packed; see the orchestrator log"))
        raise exc
    pipe.end()
    return stats
