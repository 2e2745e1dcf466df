"""Workspaces uploaded as archives: received, unpacked, kept, claimed by jobs, removed.

Layout (all the orchestrator's, none writable by the sandbox user):

* ``<projects>/upload-<id>``: a finished upload, owned by the sandbox user like any job's own
  project, directly under the projects base as ``jobs/projects.py`` requires.
* ``<projects>/.uploading/``: mode 0700. An upload is unpacked into ``.uploading/<id>`` and
  renamed into place only once complete, so a refused or broken upload never shows as a
  project; a removed one is renamed to ``.uploading/removing-<id>`` first (no job can be
  started on a half-removed tree). It lies in the projects base so that both renames stay
  on one filesystem.
* ``<state>/workspace-uploads/<id>.json``: when the upload finished and which jobs were
  created on it: what retention decides by, and it survives a restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import stat
import time
import uuid
from collections.abc import AsyncIterator, Callable
from concurrent.futures import Executor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from orchestrator.errors import (
    Busy,
    DeadlineExceeded,
    FailedPrecondition,
    InvalidArgument,
    OrchestratorError,
)
from orchestrator.logging import get_logger
from orchestrator.workspaces.extract import ExtractStats, SandboxOwnership, extract_tree
from orchestrator.workspaces.retention import Claim, JobEnd, expires_at
from orchestrator.workspaces.streams import ChunkPipe, LimitedReader, PipeClosed

log = get_logger(__name__)

UPLOAD_PREFIX = "upload-"
STAGING_NAME = ".uploading"
REMOVING_PREFIX = "removing-"
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


@dataclass(frozen=True)
class UploadedWorkspace:
    """A finished upload: its id and the project directory a CreateJob names."""

    workspace_id: str
    project_dir: Path
    unpacked_bytes: int
    entries: int


@dataclass
class UploadRecord:
    """What is kept about one upload (``<state>/workspace-uploads/<id>.json``)."""

    workspace_id: str
    created_at: float
    claims: list[Claim] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "workspace_id": self.workspace_id,
            "created_at": self.created_at,
            "claims": [{"job_id": c.job_id, "at": c.at} for c in self.claims],
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> UploadRecord:
        return cls(
            workspace_id=str(data["workspace_id"]),
            created_at=float(data["created_at"]),
            claims=[Claim(str(c["job_id"]), float(c["at"])) for c in data.get("claims", [])],
        )


@dataclass(frozen=True)
class UploadLimits:
    max_bytes: int
    at_once: int
    timeout_s: float
    retain_s: float
    unused_retain_s: float


class WorkspaceUploads:
    """Receives uploads (``receive``), records which jobs use them (``claim``), and removes
    those no job needs any more (``sweep``)."""

    def __init__(
        self,
        projects_dir: Path,
        state_dir: Path,
        limits: UploadLimits,
        executor: Executor,
        owner: SandboxOwnership | None = None,
    ) -> None:
        self._projects = projects_dir
        self._staging = projects_dir / STAGING_NAME
        self._registry = state_dir / "workspace-uploads"
        self._limits = limits
        self._executor = executor
        self._owner = owner or SandboxOwnership()
        self._busy = 0
        self._prepared = False
        # Staging entries of uploads in progress: the sweep leaves them alone.
        self._active: set[str] = set()

    @property
    def limits(self) -> UploadLimits:
        return self._limits

    def ensure_prepared(self) -> None:
        """``prepare`` once per process."""
        if not self._prepared:
            self.prepare()

    def prepare(self) -> None:
        """Creates the directories (at start); what an earlier process left half-unpacked or
        half-removed in the staging area goes (no upload is in progress yet)."""
        self._projects.mkdir(parents=True, exist_ok=True)
        self._registry.parent.mkdir(parents=True, exist_ok=True)
        for directory in (self._staging, self._registry):
            directory.mkdir(mode=0o700, exist_ok=True)
            os.chmod(directory, 0o700)
        for name in os.listdir(self._staging):
            if name not in self._active:
                _remove_tree(self._staging, name)
        self._prepared = True

    # ---------------------------------------------------------------- receive

    async def receive(
        self, chunks: AsyncIterator[bytes], compressed: bool | None = None
    ) -> UploadedWorkspace:
        """Unpacks the archive read from ``chunks`` into a new project directory.

        Raises Busy when ``at_once`` uploads are in progress, TooLarge past ``max_bytes``
        unpacked, ArchiveRefused (INVALID_ARGUMENT) for an entry a workspace may not hold,
        DeadlineExceeded after ``timeout_s``. Whatever fails, nothing is left behind.
        """
        if self._busy >= self._limits.at_once:
            raise Busy(
                f"{self._limits.at_once} workspace uploads are in progress "
                "(WORKSPACE_UPLOADS_AT_ONCE): try again when one has finished"
            )
        workspace_id = str(uuid.uuid4())
        loop = asyncio.get_running_loop()
        pipe = ChunkPipe(loop)
        reader = LimitedReader(pipe, self._limits.max_bytes, compressed)
        self._busy += 1
        self._active.add(workspace_id)
        work = loop.run_in_executor(self._executor, self._unpack, workspace_id, pipe, reader)
        work.add_done_callback(lambda done: self._unpacked(workspace_id, done))
        try:
            async with asyncio.timeout(self._limits.timeout_s):
                await _feed(chunks, pipe)
                stats = await asyncio.shield(work)
        except TimeoutError:
            raise DeadlineExceeded(
                f"the upload did not complete within {self._limits.timeout_s:g} s "
                "(WORKSPACE_UPLOAD_TIMEOUT_S)"
            ) from None
        finally:
            # Stops the unpacking thread if it still runs (the caller left, the time ran out).
            pipe.close()
        return self._publish(workspace_id, reader.total, stats)

    def _unpacked(self, workspace_id: str, done: asyncio.Future[ExtractStats]) -> None:
        self._busy -= 1
        self._active.discard(workspace_id)
        if not done.cancelled() and done.exception() is not None:
            error = done.exception()
            if not isinstance(error, (OrchestratorError, PipeClosed)):
                log.error("unpacking an upload failed", error=f"{type(error).__name__}: {error}")

    def _unpack(self, workspace_id: str, pipe: ChunkPipe, reader: LimitedReader) -> ExtractStats:
        """In a thread: ``.uploading/<id>``, filled; removed again on any failure."""
        staging = os.open(self._staging, _DIR_FLAGS)
        try:
            os.mkdir(workspace_id, 0o700, dir_fd=staging)
            try:
                root = os.open(workspace_id, _DIR_FLAGS, dir_fd=staging)
                try:
                    stats = extract_tree(reader, root, self._owner)
                    self._owner.apply(root, 0o755, is_dir=True)
                finally:
                    os.close(root)
            except BaseException:
                shutil.rmtree(workspace_id, dir_fd=staging, ignore_errors=True)
                raise
            return stats
        except OSError as exc:
            raise FailedPrecondition(f"the upload could not be unpacked: {exc.strerror}") from None
        finally:
            os.close(staging)
            pipe.close()  # an archive that ended before its bytes did: the rest is not read

    def _publish(self, workspace_id: str, unpacked: int, stats: ExtractStats) -> UploadedWorkspace:
        # On the event loop with no suspension: the sweep never sees the record without
        # the directory or the other way round.
        target = self._projects / f"{UPLOAD_PREFIX}{workspace_id}"
        self._write(UploadRecord(workspace_id, time.time()))
        try:
            os.rename(self._staging / workspace_id, target)
        except OSError as exc:
            self._drop(workspace_id)
            _remove_tree(self._staging, workspace_id)
            raise FailedPrecondition(
                f"the upload could not be put in place: {exc.strerror}"
            ) from None
        log.info(
            "workspace uploaded",
            workspace_id=workspace_id,
            unpacked_bytes=unpacked,
            entries=stats.entries,
        )
        return UploadedWorkspace(workspace_id, target, unpacked, stats.entries)

    # ---------------------------------------------------------------- jobs

    def refuse_staging(self, project: Path) -> None:
        """Raises InvalidArgument for a project inside the staging area (a half-unpacked or
        half-removed upload)."""
        staging = Path(os.path.realpath(self._staging))
        if project == staging or project.is_relative_to(staging):
            raise InvalidArgument(
                f"Project directory {project} is refused: {STAGING_NAME} holds uploads in "
                f"progress; name the project_dir the upload answered with "
                f"({UPLOAD_PREFIX}<id>)"
            )

    def claim(self, project: Path, job_id: str) -> None:
        """Records that ``job_id`` runs on ``project`` if it is an upload (retention keeps it
        while the job runs and for the retention time after it ended)."""
        workspace_id = self._workspace_id(project)
        if workspace_id is None:
            return
        record = self._read(workspace_id)
        if record is None:
            return
        record.claims.append(Claim(job_id, time.time()))
        try:
            self._write(record)
        except OSError as exc:
            # The job runs regardless; retention then counts the upload as unused.
            log.warning(
                "could not record the job on its uploaded workspace",
                job_id=job_id,
                workspace_id=workspace_id,
                error=exc.strerror,
            )

    def _workspace_id(self, project: Path) -> str | None:
        if project.parent != Path(os.path.realpath(self._projects)):
            return None
        if not project.name.startswith(UPLOAD_PREFIX):
            return None
        return project.name[len(UPLOAD_PREFIX) :]

    # ---------------------------------------------------------------- retention

    async def sweep(self, job_end: Callable[[str], JobEnd], now: float | None = None) -> list[str]:
        """Removes the uploads whose retention has passed; returns their ids."""
        now = time.time() if now is None else now
        removed: list[str] = []
        for record in self._records():
            due = expires_at(
                record.created_at,
                record.claims,
                job_end,
                self._limits.retain_s,
                self._limits.unused_retain_s,
            )
            if due is None or due > now:
                continue
            # Out of the projects base first, with no suspension since the decision: a job
            # created on it from now on finds no directory.
            removing = f"{REMOVING_PREFIX}{record.workspace_id}"
            with contextlib.suppress(FileNotFoundError):
                os.rename(
                    self._projects / f"{UPLOAD_PREFIX}{record.workspace_id}",
                    self._staging / removing,
                )
            self._drop(record.workspace_id)
            removed.append(record.workspace_id)
            log.info("uploaded workspace removed", workspace_id=record.workspace_id)
            loop = asyncio.get_running_loop()
            await loop.run_in_executor(self._executor, _remove_tree, self._staging, removing)
        return removed

    # ---------------------------------------------------------------- registry

    def _path(self, workspace_id: str) -> Path:
        return self._registry / f"{workspace_id}.json"

    def _read(self, workspace_id: str) -> UploadRecord | None:
        try:
            return UploadRecord.from_json(json.loads(self._path(workspace_id).read_text()))
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.warning("unreadable upload record", workspace_id=workspace_id, error=str(exc))
            return None

    def _records(self) -> list[UploadRecord]:
        records = []
        for name in sorted(os.listdir(self._registry)):
            if name.endswith(".json"):
                record = self._read(name[: -len(".json")])
                if record is not None:
                    records.append(record)
        return records

    def _write(self, record: UploadRecord) -> None:
        path = self._path(record.workspace_id)
        partial = path.with_suffix(".json.partial")
        fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        with os.fdopen(fd, "w") as out:
            json.dump(record.to_json(), out)
        os.replace(partial, path)

    def _drop(self, workspace_id: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self._path(workspace_id).unlink()


async def _feed(chunks: AsyncIterator[bytes], pipe: ChunkPipe) -> None:
    """Hands the received chunks to the unpacking thread until they or it end."""
    try:
        async for chunk in chunks:
            if chunk:
                await pipe.put(chunk)
        pipe.end()
    except PipeClosed:
        pass  # the unpacking ended first: its outcome says why


def _remove_tree(parent: Path, name: str) -> None:
    # rmtree works through directory descriptors and never follows a link the job left.
    try:
        fd = os.open(parent, _DIR_FLAGS)
    except OSError:
        return
    try:
        try:
            st = os.stat(name, dir_fd=fd, follow_symlinks=False)
        except FileNotFoundError:
            return
        if stat.S_ISDIR(st.st_mode):
            shutil.rmtree(name, dir_fd=fd, ignore_errors=True)
        else:
            os.unlink(name, dir_fd=fd)
    finally:
        os.close(fd)
