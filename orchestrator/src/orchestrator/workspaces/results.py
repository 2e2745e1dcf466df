"""The workspaces jobs push back at their end, where their ``/workspace`` was no directory of
this host (a cluster node's volume): what DownloadWorkspace serves for them.

One ``<state>/workspace-results/<job_id>.tar.gz`` per job. A push is written to a partial file
in the same directory (mode 0700), counted on every byte against the limit, checked entry by
entry once whole (``ironclaw_contract.archive_rules.check_result_entry``) and only then
renamed into place: a download never sees half a push, or one that broke the rules. A later
push of the same job replaces the earlier one. Retention as for uploads: the file goes
``retain_s`` after the job ended (a job this orchestrator no longer knows: after the file's
own time).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import tarfile
import time
import uuid
import zlib
from collections.abc import AsyncIterator, Callable
from concurrent.futures import Executor
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from ironclaw_contract import archive_rules
from orchestrator.errors import Busy, DeadlineExceeded, FailedPrecondition, TooLarge
from orchestrator.logging import get_logger
from orchestrator.workspaces.archive_rules import ArchiveRefused
from orchestrator.workspaces.retention import JobEnd

log = get_logger(__name__)

RESULTS_DIR = "workspace-results"
_SUFFIX = ".tar.gz"
_PARTIAL_PREFIX = ".partial-"
_READ_CHUNK = 256 * 1024
# What a push's files may hold, in multiples of what it may send: a bound for a gzip bomb (the
# check inflates it all), far above what source trees compress by.
RESULT_UNPACKED_RATIO = 16


@dataclass(frozen=True)
class PushedWorkspace:
    """A push that was kept: its size as sent, and its entries."""

    job_id: str
    bytes: int
    entries: int


class WorkspaceResults:
    """Receives pushed workspaces (``receive``), serves them (``stream``) and removes those
    past retention (``sweep``). ``max_bytes`` bounds a push as sent, ``max_unpacked_bytes``
    what its files hold."""

    def __init__(
        self,
        state_dir: Path,
        max_bytes: int,
        max_unpacked_bytes: int,
        retain_s: float,
        executor: Executor,
        timeout_s: float = 600.0,
    ) -> None:
        self._dir = state_dir / RESULTS_DIR
        self._timeout_s = timeout_s
        # A job has one workspace: one push of it at a time, so the partial files on disk are
        # at most one per job, each bounded by max_bytes.
        self._pushing: set[str] = set()
        self._max_bytes = max_bytes
        self._max_unpacked = max_unpacked_bytes
        self._retain_s = retain_s
        self._executor = executor
        self._prepared = False

    def ensure_prepared(self) -> None:
        """Creates the directory once per process; partial pushes an earlier one left go."""
        if self._prepared:
            return
        self._dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(self._dir, 0o700)
        for name in os.listdir(self._dir):
            if name.startswith(_PARTIAL_PREFIX):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self._dir / name)
        self._prepared = True

    def path(self, job_id: str) -> Path:
        return self._dir / f"{job_id}{_SUFFIX}"

    def has(self, job_id: str) -> bool:
        return self.path(job_id).is_file()

    async def receive(self, job_id: str, chunks: AsyncIterator[bytes]) -> PushedWorkspace:
        """Keeps the .tar.gz read from ``chunks`` as the job's result. Raises TooLarge past
        ``max_bytes`` (or ``max_unpacked_bytes`` of files), ArchiveRefused for an archive that
        is no .tar.gz or holds an entry a result may not, Busy while the job already pushes,
        DeadlineExceeded after ``timeout_s`` (a push trickled byte by byte); nothing is kept
        then."""
        if job_id in self._pushing:
            raise Busy(f"job {job_id} is already pushing its workspace")
        self._pushing.add(job_id)
        try:
            async with asyncio.timeout(self._timeout_s):
                return await self._receive(job_id, chunks)
        except TimeoutError:
            raise DeadlineExceeded(
                f"the pushed workspace did not arrive within {self._timeout_s:g} s "
                "(WORKSPACE_UPLOAD_TIMEOUT_S)"
            ) from None
        finally:
            self._pushing.discard(job_id)

    async def _receive(self, job_id: str, chunks: AsyncIterator[bytes]) -> PushedWorkspace:
        self.ensure_prepared()
        loop = asyncio.get_running_loop()
        partial = self._dir / f"{_PARTIAL_PREFIX}{job_id}-{uuid.uuid4().hex}"
        fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        kept = False
        try:
            with os.fdopen(fd, "wb") as out:
                total = 0
                async for chunk in chunks:
                    total += len(chunk)
                    if total > self._max_bytes:
                        raise TooLarge(
                            f"the pushed workspace is larger than "
                            f"{self._max_bytes // (1024 * 1024)} MiB (WORKSPACE_UPLOAD_MAX_MB)"
                        )
                    await loop.run_in_executor(self._executor, out.write, chunk)
                await loop.run_in_executor(self._executor, _flush, out)
            entries = await loop.run_in_executor(
                self._executor, check_result_archive, partial, self._max_unpacked
            )
            os.replace(partial, self.path(job_id))
            kept = True
        finally:
            if not kept:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(partial)
        log.info("workspace pushed", job_id=job_id, bytes=total, entries=entries)
        return PushedWorkspace(job_id, total, entries)

    async def stream(self, job_id: str) -> AsyncIterator[bytes]:
        """The job's pushed .tar.gz, chunk by chunk; FailedPrecondition when there is none."""
        loop = asyncio.get_running_loop()
        try:
            source = self.path(job_id).open("rb")
        except FileNotFoundError:
            raise FailedPrecondition(f"job {job_id} has no pushed workspace") from None
        with source:
            while chunk := await loop.run_in_executor(self._executor, source.read, _READ_CHUNK):
                yield chunk

    async def sweep(self, job_end: Callable[[str], JobEnd], now: float | None = None) -> list[str]:
        """Removes the results whose retention has passed; returns their job ids."""
        if not self._prepared:
            return []
        now = time.time() if now is None else now
        removed = []
        for name in sorted(os.listdir(self._dir)):
            if name.startswith(_PARTIAL_PREFIX) or not name.endswith(_SUFFIX):
                continue
            job_id = name[: -len(_SUFFIX)]
            end = job_end(job_id)
            if end.live:
                continue
            try:
                ended = (
                    end.ended_at if end.ended_at is not None else os.stat(self._dir / name).st_mtime
                )
            except FileNotFoundError:
                continue
            if ended + self._retain_s > now:
                continue
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self._dir / name)
            removed.append(job_id)
            log.info("pushed workspace removed", job_id=job_id)
        return removed


def _flush(out: BinaryIO) -> None:
    out.flush()
    os.fsync(out.fileno())


def check_result_archive(path: Path, max_unpacked_bytes: int) -> int:
    """Reads the .tar.gz at ``path`` through, entry by entry; returns how many it holds.
    Raises ArchiveRefused (the first rule broken, or not a .tar.gz) or TooLarge."""
    held = 0
    entries = 0
    try:
        with tarfile.open(path, mode="r|gz") as tar:
            for info in tar:
                held += archive_rules.check_result_entry(info)
                entries += 1
                if held > max_unpacked_bytes:
                    raise TooLarge(
                        f"the pushed workspace holds more than "
                        f"{max_unpacked_bytes // (1024 * 1024)} MiB of files"
                    )
                # Stream mode keeps every header read; nothing here looks back at them.
                tar.__dict__["members"].clear()
    except archive_rules.ArchiveRefused as exc:
        raise ArchiveRefused(f"the pushed workspace is refused: {exc}") from None
    except (tarfile.TarError, EOFError, zlib.error, OSError) as exc:
        raise ArchiveRefused(
            f"the pushed workspace is not a complete .tar.gz archive ({type(exc).__name__}: {exc})"
        ) from None
    return entries
