"""Unpacks an upload with the contract's extractor (``ironclaw_contract.archive_extract``),
giving what it makes to the sandbox user, and answers its refusals as the orchestrator's
errors."""

from __future__ import annotations

import os

from ironclaw_contract import archive_extract, archive_rules
from ironclaw_contract.archive_extract import ExtractStats, Readable
from orchestrator.errors import FailedPrecondition
from orchestrator.jobs.projects import SANDBOX_GID, SANDBOX_UID
from orchestrator.workspaces.archive_rules import ArchiveRefused

__all__ = ["ExtractStats", "SandboxOwnership", "extract_tree"]


class SandboxOwnership:
    """How what is unpacked becomes the sandbox user's: as root, by owner (uid/gid 1000, the
    archive's permission bits); running as uid 1000, it already is; as any other user, by
    permission bits (group and others may write), as ``create_job_project_dir`` does."""

    def __init__(self, euid: int | None = None) -> None:
        self._euid = os.geteuid() if euid is None else euid

    def apply(self, fd: int, mode: int, is_dir: bool) -> None:
        if self._euid == 0:
            os.fchown(fd, SANDBOX_UID, SANDBOX_GID)
        elif self._euid != SANDBOX_UID:
            mode |= 0o777 if is_dir else 0o666
        os.fchmod(fd, mode)


def extract_tree(source: Readable, root_fd: int, owner: SandboxOwnership) -> ExtractStats:
    """Unpacks the (already inflated) tar archive read from ``source`` below ``root_fd``.
    Raises ArchiveRefused (INVALID_ARGUMENT) for an entry a workspace may not hold,
    FailedPrecondition when one cannot be written; what was unpacked until then is the
    caller's to remove."""
    try:
        return archive_extract.extract_tree(source, root_fd, owner)
    except archive_rules.ArchiveRefused as exc:
        raise ArchiveRefused(str(exc)) from None
    except archive_extract.ArchiveUnwritable as exc:
        if exc.disk_full:
            raise FailedPrecondition(f"the orchestrator's disk is full: {exc}") from None
        raise FailedPrecondition(str(exc)) from None
