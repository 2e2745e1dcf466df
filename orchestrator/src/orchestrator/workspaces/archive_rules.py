"""An uploaded archive's refusals as the orchestrator answers them. The rules themselves live in
the contract package (``ironclaw_contract.archive_rules``): a job container that fetches its
workspace applies the same ones."""

from __future__ import annotations

from orchestrator.errors import InvalidArgument


class ArchiveRefused(InvalidArgument):
    """An entry of an archive that a workspace may not contain (INVALID_ARGUMENT)."""
