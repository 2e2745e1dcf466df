"""The job's workspace before its agent starts and after it ends, the same for the worker, the
Claude bridge and the agent runner.

Before: a git workspace (``GET /job``'s ``git``) is cloned into the empty ``/workspace``; where
``/workspace`` is a volume of the job's own on a cluster node (``workspace_sync``), the project
is fetched from the orchestrator (``GET workspace``, a .tar.gz) and unpacked under the same
refusals the orchestrator applies to uploads (``ironclaw_contract.archive_extract``). After,
in that case only: ``/workspace`` is packed (``ironclaw_contract.archive_pack``: links stay
links, nothing is followed) and pushed back (``PUT workspace``) before the result is reported,
since the job's token dies with the result and the volume with the container.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from ironclaw_contract import archive_extract, archive_pack
from ironclaw_contract.archive_rules import ArchiveRefused
from ironclaw_contract.worker_api import WORKSPACE
from worker.client import TokenRejected, WorkerApiClient, WorkerClientError
from worker.git_checkout import CheckoutFailed, clone_workspace, git_workspace

log = logging.getLogger(__name__)

FETCH_TIMEOUT_S = 600.0
PUSH_TIMEOUT_S = 600.0
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC


class WorkspaceNotReady(Exception):
    """The workspace could not be put in place; the message says why, for the job's result,
    and ``reason`` is the result's ``details.reason``."""

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


class PushTooLarge(Exception):
    """The packed workspace outgrew what the orchestrator takes."""


def _sync(job: Mapping[str, Any]) -> Mapping[str, Any] | None:
    info = job.get("workspace_sync")
    return info if isinstance(info, Mapping) else None


def prepare_workspace(
    client: WorkerApiClient,
    job: Mapping[str, Any],
    workspace: Path,
    env: Mapping[str, str],
    secrets: Iterable[str] = (),
) -> str | None:
    """Fills the empty ``workspace`` as the job asks: a git clone, or the project fetched from
    the orchestrator; returns a line saying what is there (None: nothing to do, the project
    directory is mounted). Raises WorkspaceNotReady; TokenRejected when the job is over."""
    source = git_workspace(job)
    if source is not None:
        try:
            return clone_workspace(source, workspace, env, secrets)
        except CheckoutFailed as exc:
            raise WorkspaceNotReady(str(exc), "workspace_checkout") from None
    sync = _sync(job)
    if sync is None or not sync.get("fetch"):
        return None
    max_bytes = int(sync.get("max_bytes") or 0) or None
    try:
        stats = client.download(WORKSPACE, lambda body: _unpack(body, workspace, max_bytes))
    except TokenRejected:
        raise
    except (ArchiveRefused, archive_extract.ArchiveUnwritable, WorkerClientError) as exc:
        raise WorkspaceNotReady(
            f"the workspace could not be fetched from the orchestrator: {exc}", "workspace_fetch"
        ) from None
    return f"fetched the workspace: {stats.entries} entries, {stats.file_bytes} bytes of files"


def _unpack(
    body: archive_extract.Readable, workspace: Path, max_bytes: int | None
) -> archive_extract.ExtractStats:
    present = sorted(entry.name for entry in workspace.iterdir())
    if present:
        shown = ", ".join(repr(name) for name in present[:5])
        raise ArchiveRefused(f"the workspace {workspace} is not empty (it holds {shown})")
    root = os.open(workspace, _DIR_FLAGS)
    try:
        return archive_extract.extract_tree(
            body, root, archive_extract.ModeOnly(), max_file_bytes=max_bytes, gzipped=True
        )
    finally:
        os.close(root)


def push_workspace(client: WorkerApiClient, job: Mapping[str, Any], workspace: Path) -> None:
    """Pushes ``workspace`` back when the job's is a volume of its own; best effort: a push
    that fails is logged (the job's result is reported all the same, and DownloadWorkspace
    then says that nothing was pushed)."""
    sync = _sync(job)
    if sync is None:
        return
    limit = int(sync.get("max_bytes") or 0)
    sent = 0

    def count(chunk: bytes) -> bytes:
        nonlocal sent
        sent += len(chunk)
        if limit and sent > limit:
            raise PushTooLarge(
                f"the workspace is larger than {limit // (1024 * 1024)} MiB packed: not pushed"
            )
        return chunk

    try:
        answer = client.upload(
            WORKSPACE,
            lambda emit: archive_pack.pack_tree(str(workspace), lambda c: emit(count(c))),
            timeout=PUSH_TIMEOUT_S,
        )
    except (PushTooLarge, archive_pack.PackFailed, OSError, WorkerClientError) as exc:
        log.error("the workspace was not pushed back: %s", exc)
        return
    entries = answer.get("entries") if isinstance(answer, Mapping) else None
    log.info("pushed the workspace back: %d bytes, %s entries", sent, entries)
