"""Packs a job's project directory with the contract's packer
(``ironclaw_contract.archive_pack``), answering its failures as FAILED_PRECONDITION."""

from __future__ import annotations

from collections.abc import Callable

from ironclaw_contract import archive_pack
from ironclaw_contract.archive_pack import MAX_DEPTH, PackStats
from orchestrator.errors import FailedPrecondition

__all__ = ["MAX_DEPTH", "PackStats", "pack_tree"]


def pack_tree(root: str, emit: Callable[[bytes], None]) -> PackStats:
    """Writes ``root`` as a .tar.gz to ``emit``, chunk by chunk (see ``archive_pack``)."""
    try:
        return archive_pack.pack_tree(root, emit)
    except archive_pack.PackFailed as exc:
        raise FailedPrecondition(str(exc)) from None
